"""Messages written outside the UI, shown in the visitor's language: `localize(text)`.

The session, the knowledge base, the runtime, the adapter store and the trainer write their
messages in English (they know nothing of the UI, and exports and logs stay English). This
module translates the ones the UI shows — toasts of their errors, progress text, the notes and
remarks of a retrieval, chat notes, status lines — into Simplified Chinese when the request
being handled is zh-CN (`mmchat.ui.i18n.current`), by an ordered table of (regex on the English
message, Chinese template using its groups).

`localize` tries, in order: the whole message against the table (first match wins); a
message of several lines, line by line; a message of "; "-separated parts (the ingest summary,
a refusal followed by what is accepted), part by part, joining adjacent parts while they only
match together; a leading marker ("- ", "> ", "❌ "...) or a "name: " prefix (a file name before
a loader's reason) kept as it is in front of a translated rest. Parts that match nothing stay
as they are, so an unknown message (or one with a new wording) passes through unchanged.

It does not translate the model's answers, document text, names (files, models, adapters,
runs), exception text embedded in a message (shown inside its brackets as it is), nor anything
under an English request; it changes nothing that is stored (chat history keeps its English
notes, exports stay English): it is applied where a message is displayed.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from mmchat.ui.i18n import current, term

Template = str | Callable[[re.Match], str]


def _phase(value: str) -> str:
    return term("phase", value)


def _duration(value: str) -> str:
    """'3 min' -> '3 分钟' (the trainer's `_duration`)."""
    number, _, unit = value.partition(" ")
    return number + {"s": " 秒", "min": " 分钟", "h": " 小时"}.get(unit, f" {unit}")


def _more(value: str) -> str:
    """'a.pdf, b.pdf, c.pdf and 2 more' -> 'a.pdf、b.pdf、c.pdf 等另外 2 个'."""
    return re.sub(r" and (\d+) more$", r" 等另外 \1 个", value)


def _nested(value: str) -> str:
    """A message inside a message: wholly translated, or (when matching strictly) no match."""
    found = _whole(value)
    if found is None:
        if _strict[0]:
            raise _Untranslated(value)
        return _translate(value)
    return found


_ACTIONS = {"undo": "撤销", "clear the chat": "清空对话", "import a chat": "导入对话"}


def _maybe(value: str) -> str:
    """Free text inside a message (e.g. an error's reason): translated where known, else as it is."""
    return _translate(value)


def _ingest_refusal(match: re.Match) -> str:
    name, message = match["name"], match["message"]
    if message.startswith(f"{name}: "):  # a loader's reason names the file itself
        message = message[len(name) + 2:]
    return f"已拒绝 {name}：{_nested(message)}"


def _dataset_line(match: re.Match) -> str:
    text = f"**{match['source']}**：{match['usable']} 行可用，{match['bad']} 行有问题"
    return text + (f"，{match['left']} 行被略过" if match["left"] else "")


def _tokens_line(match: re.Match) -> str:
    text = f"每行 token 数：p50 {match['p50']}，p95 {match['p95']}，最大 {match['max']}；上限 {match['cutoff']}"
    return text + (f"（{match['over']} 行超出）" if match["over"] else "")


_ACCEPTED_FILES = (r"PDF, Word \(\.docx\), Markdown, HTML, plain text \((?P<encodings>[^)]*)\), "
                   r"and PNG/JPEG/WebP images")

# (English message as a regex, matched whole; Chinese template; converters for some groups).
# Ordered: the first match wins, so specific wordings come before general ones.
RULES: list[tuple[str, Template, dict[str, Callable[[str], str]]]] = [
    # ----- the knowledge base (mmchat/knowledge/base.py, retrieval.py) -----
    (r"Indexing is in progress \((?P<names>.+)\); this answer uses only the documents indexed so far\. "
     r"Ask again when indexing has finished to include them\.",
     "正在建立索引（{names}）；本回答只用到了已索引的文档。索引完成后再问一次，就能用上它们。", {"names": _more}),
    (r"indexed (?P<n>\d+) file\(s\) \((?P<chunks>\d+) chunks\) in (?P<s>[\d.]+) s",
     "已索引 {n} 个文件（{chunks} 个片段），用时 {s} 秒", {}),
    (r"already indexed: (?P<names>.+)", "已经索引过：{names}", {}),
    (r"cancelled; files not yet indexed were skipped and nothing is half-indexed",
     "已取消；尚未索引的文件已跳过，不会留下索引了一半的文件", {}),
    (r"refused (?P<name>.+?): (?P<message>.+)", _ingest_refusal, {}),
    (r"nothing to index", "没有要索引的文件", {}),
    (r"could not be read \((?P<error>.+)\)", "无法读取（{error}）", {}),
    (r"indexing failed \((?P<error>.+)\)", "索引失败（{error}）", {}),
    (r"waiting for another upload to finish indexing…", "正在等待另一次上传完成索引…", {}),
    (r"(?P<name>.+): (?P<step>reading|embedded \d+/\d+ chunks|updating the keyword \(BM25\) index) "
     r"\((?P<i>\d+)/(?P<n>\d+)\)", "{name}：{step}（{i}/{n}）", {"step": _nested}),
    (r"reading", "读取中", {}),
    (r"embedded (?P<done>\d+)/(?P<total>\d+) chunks", "已向量化 {done}/{total} 个片段", {}),
    (r"updating the keyword \(BM25\) index", "正在更新关键词（BM25）索引", {}),
    (r"the question has no words to search for", "问题里没有可以检索的词", {}),
    (r"no source relevant enough \(best relevance (?P<best>[\d.]+) < floor (?P<floor>[\d.]+)\)",
     "没有足够相关的来源（最高相关度 {best}，低于阈值 {floor}）", {}),
    (r"the question points at a picture in the chat; documents count only for what it names",
     "问题指向对话中的图片；文档只在问题明确提到的内容上起作用", {}),
    (r"'Whole document' needs one or more documents chosen in the filter, together under (?P<n>[\d,]+) "
     r"characters; used the best chunks instead\.",
     "“使用整篇文档”需要在筛选框中选择一篇或多篇文档，且总长度不超过 {n} 个字符；已改用最相关的片段。", {}),
    (r"no document with id (?P<id>\w+)… in the knowledge base", "知识库中没有 id 为 {id}… 的文档", {}),
    (r"indexing is in progress; cancel it or wait before resetting", "正在建立索引；请先取消或等它完成，再清空知识库", {}),
    # ----- per-file refusals (mmchat/knowledge/loaders.py, mmchat/attachments.py): the reason, after "name: " -----
    (r"accepted: " + _ACCEPTED_FILES + r"\.?", "可接受：PDF、Word（.docx）、Markdown、HTML、纯文本（{encodings}）"
     "以及 PNG/JPEG/WebP 图片。", {}),
    (r"accepted: (?P<formats>[\w/, ]+) images up to (?P<size>[\d.]+ [KMG]?B)\.",
     "可接受：不超过 {size} 的 {formats} 图片。", {}),
    (r"accepted: (?P<formats>[\w/, ]+) images\.", "可接受：{formats} 图片。", {}),
    (r"file is empty \(0 bytes\)", "文件是空的（0 字节）", {}),
    (r"file is (?P<size>[\d.,]+ [KMG]?B)", "文件大小为 {size}", {}),
    (r"the limit is (?P<n>[\d,]+) per file", "每个文件上限为 {n} 个", {}),
    (r"the limit is (?P<n>[\d,]+) pages", "上限为 {n} 页", {}),
    (r"the limit is (?P<limit>[^;]+?)(?P<stop>\.?)", "上限为 {limit}", {}),
    (r"split it into smaller files\.", "请拆分成较小的文件。", {}),
    (r"split it into smaller files or simplify its structure\.", "请拆分成较小的文件，或简化其结构。", {}),
    (r"splits into more than (?P<n>[\d,]+) chunks", "切分后超过 {n} 个片段", {}),
    (r"has (?P<n>[\d,]+) characters of text", "文字有 {n} 个字符", {}),
    (r"no text to index", "没有可索引的文字", {}),
    (r"the (?P<kind>.+) file contains no text", "这个 {kind} 文件里没有文字", {}),
    (r"images need the image encoder, which is not loaded", "图片需要图像编码器，但它没有加载", {}),
    (r"not a PDF file \(it has no %PDF- header; found (?P<found>.+)\)", "不是 PDF 文件（没有 %PDF- 文件头；检测到 {found}）", {}),
    (r"not a Word \.docx file \(not a ZIP archive; found (?P<found>.+)\)",
     "不是 Word .docx 文件（不是 ZIP 压缩包；检测到 {found}）", {}),
    (r"not a supported file \(found (?P<found>.+)\)", "不是支持的文件类型（检测到 {found}）", {}),
    (r"not a (?P<format>\w+) image \(found (?P<found>.+)\)", "不是 {format} 图片（检测到 {found}）", {}),
    (r"not a text file \((?P<reason>.+)\)", "不是文本文件（{reason}）", {}),
    (r"the PDF is encrypted", "PDF 已加密", {}),
    (r"the document is encrypted", "文档已加密", {}),
    (r"remove the password and upload it again\.", "请去掉密码后重新上传。", {}),
    (r"the PDF has (?P<n>[\d,]+) pages", "PDF 有 {n} 页", {}),
    (r"the PDF has no pages", "PDF 没有页面", {}),
    (r"the PDF has no text layer \(scanned\?\)", "PDF 没有文字层（扫描件？）", {}),
    (r"OCR is not supported", "不支持 OCR", {}),
    (r"upload a PDF with selectable text, or the document as Word, Markdown or text\.",
     "请上传文字可选中的 PDF，或者 Word、Markdown、纯文本格式的文档。", {}),
    (r"reading it took longer than the (?P<limit>[\d.]+) s allowed \(stopped while (?P<step>.+), after "
     r"(?P<s>[\d.]+) s\)", "读取时间超过了允许的 {limit} 秒（在{step}时停止，已用 {s} 秒）", {"step": _nested}),
    (r"splitting the text into chunks", "把文字切分成片段", {}),
    (r"not a recognised image", "不是可识别的图片", {}),
    (r"not an image \(detected (?P<label>.+)\)", "不是图片（检测为 {label}）", {}),
    (r"image format (?P<format>.+) is not accepted", "不接受 {format} 格式的图片", {}),
    (r"image is (?P<w>\d+) x (?P<h>\d+) pixels \((?P<shown>[^)]+)\)", "图片为 {w} × {h} 像素（{shown}）", {}),
    (r"image is too large to decode\.", "图片太大，无法解码。", {}),
    (r"the (?P<format>\w+) data is corrupt or truncated \((?P<error>.+)\)", "{format} 数据已损坏或不完整（{error}）", {}),
    (r"re-save or re-export the image and upload the complete file\.", "请重新保存或导出图片，再上传完整的文件。", {}),
    (r"accepted: (?P<what>.+)", "可接受：{what}", {}),
    # ----- the chat session (mmchat/session.py) -----
    (r"The question is about the attached image, so documents were not used \(best match: relevance "
     r"(?P<relevance>[\d.]+), (?P<shared>\d+) shared term\(s\); needs 2 terms and (?P<strong>[\d.]+)\)\. "
     r"Mention the documents to use them\.",
     "问题问的是附带的图片，所以没有使用文档（最佳匹配：相关度 {relevance}，与问题有 {shared} 个共同词语；"
     "需要至少 2 个共同词语且相关度达到 {strong}）。在问题里提到文档即可使用它们。", {}),
    (r"Only (?P<used>\d+) of (?P<total>\d+) retrieved sources fit in the model's context\.",
     "检索到的 {total} 个来源中只有 {used} 个能放进模型的上下文。", {}),
    (r"The conversation outgrew the model's (?P<context>\d+)-token context: the oldest (?P<n>\d+) message\(s\) "
     r"are no longer sent to the model\.",
     "对话超出了模型 {context} 个 token 的上下文：最早的 {n} 条消息不再发送给模型。", {}),
    (r"Retrieval failed \((?P<error>.+)\); this answer does not use the knowledge base\.",
     "检索失败（{error}）；本回答没有使用知识库。", {}),
    (r"(?P<why>.+); this answer does not use the documents\.", "{why}；本回答没有使用文档。", {"why": _nested}),
    (r"the message is (?P<n>\d+) characters", "消息有 {n} 个字符", {}),
    (r"(?P<n>\d+) images attached", "附加了 {n} 张图片", {}),
    (r"at most (?P<n>\d+) per message", "每条消息最多 {n} 张", {}),
    (r"the message is empty", "消息是空的", {}),
    (r"type a question or attach an image", "请输入问题或附加一张图片", {}),
    (r"there is no question to answer again", "没有可以重新回答的问题", {}),
    (r"send a message first", "请先发送一条消息", {}),
    (r"an answer is still streaming", "回答仍在生成中", {}),
    (r"stop it or wait for it to finish", "请先停止它或等它完成", {}),
    (r"cannot (?P<action>undo|clear the chat|import a chat) while an answer is streaming",
     "回答生成期间不能{action}", {"action": lambda a: _ACTIONS.get(a, a)}),
    (r"stop it first", "请先停止它", {}),
    (r"the (?P<preset>\S+) model takes no LoRA adapters", "{preset} 模型不支持 LoRA 适配器", {}),
    (r"answer with 'base'", "请用 'base' 回答", {}),
    (r"(?P<name>.+?): not a chat export", "{name}：不是对话导出文件", {}),
    (r"accepted: a \.zip or chat\.json exported by mmchat", "可接受：mmchat 导出的 .zip 或 chat.json", {}),
    # ----- the runtime (mmchat/runtime.py) -----
    (r"[Tt]he knowledge base is still opening \((?P<phase>.+)\)", "知识库仍在打开（{phase}）", {"phase": _phase}),
    (r"The knowledge base is unavailable \((?P<reason>.+)\)", "知识库不可用（{reason}）", {"reason": _maybe}),
    (r"it did not open", "它没能打开", {}),
    (r"the knowledge base is unavailable: (?P<error>.+)", "知识库不可用：{error}", {}),
    (r"the knowledge base is switched off \(\[knowledge\] enabled = false\)",
     "知识库已关闭（[knowledge] enabled = false）", {}),
    (r"try again shortly", "请稍后再试", {}),
    (r"the model is still loading \((?P<phase>.+)\)", "模型仍在加载（{phase}）", {"phase": _phase}),
    (r"try again in a moment", "请稍等片刻再试", {}),
    (r"the model failed to load: (?P<error>.+)", "模型加载失败：{error}", {}),
    # ----- adapters (mmchat/adapters/registry.py, store.py) -----
    (r"(?P<folder>.+?): is the name of a shipped adapter; your copy in (?P<root>.+) is not loaded \(rename it "
     r"and the name in its card, or remove that folder\)",
     "{folder}：与自带的适配器同名；你在 {root} 中的副本没有加载（请给它和它卡片里的名字改名，或删除该文件夹）", {}),
    (r"could not be loaded \((?P<error>.+)\)", "无法加载（{error}）", {}),
    (r"trained on (?P<base>.+?) \(fingerprint (?P<fp>[^)]+)\), not the loaded base(?P<loaded>(?: .+?)?) "
     r"\(fingerprint (?P<fp2>[^)]+)\)",
     "训练所用的基础模型是 {base}（指纹 {fp}），不是当前加载的基础模型{loaded}（指纹 {fp2}）", {}),
    (r"no adapter named (?P<name>.+) is loaded; loaded: (?P<names>.+)", "没有加载名为 {name} 的适配器；已加载：{names}", {}),
    # ----- fine-tuning (mmchat/training/service.py, datasets.py, runs.py) -----
    (r"(?P<steps>\d+) steps, about (?P<duration>[\d.]+ (?:s|min|h)) \(measured on this machine by run (?P<run>\S+): "
     r"(?P<per_step>[\d.]+) s a step of (?P<batch>\d+)\)",
     "{steps} 步，约 {duration}（按本机运行 {run} 的实测：每步 {batch} 条样本用时 {per_step} 秒）",
     {"duration": _duration}),
    (r"(?P<steps>\d+) steps; the time is estimated once a first run has measured a step on this machine",
     "{steps} 步；本机完成第一次运行、测出每步用时后，才能估计所需时间", {}),
    (r"\*\*(?P<source>.+)\*\*: (?P<usable>\d+) usable rows?, (?P<bad>\d+) bad rows?(?:, (?P<left>\d+) left out)?",
     _dataset_line, {}),
    (r"formats: (?P<formats>.+)", "格式：{formats}", {}),
    (r"kinds: (?P<kinds>.+)", "类型：{kinds}", {}),
    (r"tokens per row: p50 (?P<p50>\d+), p95 (?P<p95>\d+), max (?P<max>\d+); cutoff (?P<cutoff>\d+)"
     r"(?: \((?P<over>\d+) over it\))?", _tokens_line, {}),
    (r"split: (?P<train>\d+) train, (?P<eval>\d+) eval", "划分：{train} 行训练，{eval} 行评估", {}),
    (r"(?P<n>\d+) row\(s\) carry their own system message; training uses the chat's system prompt instead "
     r"\(what chat sends\)", "{n} 行自带系统消息；训练改用对话的系统提示词（与对话实际发送的一致）", {}),
    (r"(?P<n>\d+) unanswered user turn\(s\) at the end of conversations are not trained on",
     "对话末尾有 {n} 个未回答的用户轮次，不参与训练", {}),
    (r"(?P<bad>\d+) bad rows? (?:are|is) listed below; fix them, or train on the (?P<usable>\d+) usable rows\.",
     "有问题的 {bad} 行列在下面；请修正它们，或者只用 {usable} 个可用行训练。", {}),
    (r"(?P<bad>\d+) row\(s\) of (?P<source>.+) are not usable; fix them, or tick \"train on the (?P<usable>\d+) "
     r"usable rows\"", "{source} 中有 {bad} 行不可用；请修正它们，或勾选“只用 {usable} 个可用行训练”", {}),
    (r"(?P<source>.+) has no usable training rows", "{source} 没有可用的训练行", {}),
    (r"an adapter named (?P<name>.+) already exists; choose another name", "名为 {name} 的适配器已存在；请换一个名字", {}),
    (r"the row is (?P<size>.+), over the limit of (?P<limit>.+)", "这一行大小为 {size}，超过了上限 {limit}", {}),
    (r"not JSON \((?P<detail>.+)\)", "不是 JSON（{detail}）", {}),
    (r"accepted: one JSON object per line", "可接受：每行一个 JSON 对象", {}),
    (r"the row is (?P<n>\d+) tokens once rendered, more than the cutoff \(max_length\) of (?P<cutoff>\d+); "
     r"raise max_length or shorten it", "这一行渲染后有 {n} 个 token，超过了上限（max_length）{cutoff}；请调大 max_length 或缩短这一行", {}),
    (r"the trainer ended without finishing \(exit status (?P<code>-?\d+)(?:, killed by signal (?P<signal>\d+))?\); "
     r"nothing was published\. Its last output is below\.",
     lambda m: f"训练进程没有完成就结束了（退出状态 {m['code']}" + (f"，被信号 {m['signal']} 终止" if m["signal"] else "")
     + "）；没有发布任何内容。它最后的输出在下面。", {}),
    (r"the app stopped while this run was training; resume it to continue from its last checkpoint",
     "这次运行训练时应用停止了；继续运行即可从它最后的检查点接着训练", {}),
    (r"a training run is already going: (?P<rest>.+)", "已经有一个训练在运行：{rest}", {}),
    (r"run (?P<run>\S+) is already training", "运行 {run} 已经在训练中", {}),
]

_COMPILED = [(re.compile(pattern, re.S), template, converters) for pattern, template, converters in RULES]
# Kept in front of a translated rest: Markdown list items and quotes, the status emoji.
_MARKERS = ("- ", "> ", "❌ ", "⏳ ", "⚠️ ", "✅ ")
_NAME_PREFIX = re.compile(r"(?P<name>[^:;\n]{1,200}?): (?P<rest>.+)", re.S)


class _Untranslated(Exception):
    """A nested part the table does not know (a strict match then fails)."""


_strict = [True]


def _rule(text: str) -> str | None:
    for pattern, template, converters in _COMPILED:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        try:
            if callable(template):
                return template(match)
            values = {k: converters[k](v) if k in converters and v is not None else (v or "")
                      for k, v in match.groupdict().items()}
            return template.format(**values)
        except _Untranslated:
            continue
    return None


def _one(text: str) -> str | None:
    """One message or part: a rule, or a marker / a name before a translatable rest; None if neither."""
    found = _rule(text)
    if found is not None:
        return found
    for marker in _MARKERS:
        if text.startswith(marker):
            rest = _one(text[len(marker):])
            return None if rest is None else marker + rest
    prefixed = _NAME_PREFIX.fullmatch(text)
    if prefixed:
        rest = _one(prefixed["rest"])
        if rest is not None:
            return f"{prefixed['name']}：{rest}"
    return None


def _parts(text: str, strict: bool) -> str | None:
    """Lines one by one, else "; "-separated parts (each the shortest run of parts that matches).

    Strict: None unless every part matched; lenient: unmatched parts as they are."""
    if "\n" in text:
        lines = [_whole(line) if line.strip() else line for line in text.split("\n")]
        if None in lines:
            if strict:
                return None
            lines = [_translate(line) if line.strip() else line for line in text.split("\n")]
        return "\n".join(lines)
    parts = text.split("; ")
    if len(parts) == 1:
        return None if strict else text
    out, i = [], 0
    while i < len(parts):
        for j in range(i + 1, len(parts) + 1):
            found = _one("; ".join(parts[i:j]))
            if found is not None:
                out.append(found.rstrip("。") if j < len(parts) else found)
                i = j
                break
        else:
            if strict:
                return None
            out.append(_lenient_one(parts[i]))
            i += 1
    if out == parts:  # nothing known: as it was
        return text
    return "；".join(out)


def _whole(text: str) -> str | None:
    """`text` translated entirely, or None when any part of it is unknown."""
    return _one(text) or _parts(text, strict=True)


def _lenient_one(text: str) -> str:
    """One part with what the table knows of it: a rule whose nested parts are partly unknown."""
    _strict[0] = False
    try:
        return _one(text) or text
    finally:
        _strict[0] = True


def _translate(text: str) -> str:
    """`text` in Chinese as far as the table reaches; what matches nothing stays as it is."""
    found = _whole(text)
    if found is not None:
        return found
    return _parts(text, strict=False) or text


def localize(text: Any) -> Any:
    """`text` in the request's language: Chinese under zh-CN where the table knows it, else as it is."""
    if not isinstance(text, str) or not text or current() != "zh-CN":
        return text
    return _translate(text)


__all__ = ["RULES", "localize"]
