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


def _size(value: str) -> str:
    """'791 bytes' -> '791 字节' (`mmchat.files.human_bytes`; KB/MB/GB stay)."""
    return re.sub(r"\bbytes\b", "字节", value)


def _stop(value: str) -> str:
    """A sentence's closing '.' as '。'."""
    return "。" if value else ""


def _found(value: str) -> str:
    """What a loader found instead: 'binary data', 'a GIF image', 'PDF data' (`loaders._found`)."""
    fixed = {"text": "文本", "binary data": "二进制数据",
             "a ZIP archive that is not a Word document": "不是 Word 文档的 ZIP 压缩包"}
    if value in fixed:
        return fixed[value]
    if image := re.fullmatch(r"an? (.+) image", value):
        return f"{image[1]} 图片"
    if data := re.fullmatch(r"(.+) data", value):
        return f"{data[1]} 数据"
    return value


def _kind(value: str) -> str:
    """A loader's kind label ('text', 'Word (.docx)'...): the document kinds' terms, format names as they are."""
    return term("kind", value)


def _series(value: str, english: str, chinese: str) -> str:
    """Names joined by `english` ("a or b or c") -> "a、b 或 c", joined by `chinese`."""
    names = value.split(f" {english} ")
    return names[0] if len(names) == 1 else "、".join(names[:-1]) + f" {chinese} " + names[-1]


def _either(value: str) -> str:
    """'int or float or null' -> 'int、float 或 null' (a chat import's accepted types)."""
    return _series(value, "or", "或")


_ZIP_MEMBER = {  # mmchat.files.zip_member_problem
    "has a NUL byte in its name": "的名称中含有 NUL 字节",
    "uses backslashes (a Windows path)": "使用了反斜杠（Windows 路径）",
    "is an absolute path": "是绝对路径",
    "starts with a drive letter": "以盘符开头",
    "climbs out of the folder with '..'": "用 '..' 跳出了所在文件夹",
    "is a symbolic link": "是符号链接",
    "is encrypted": "已加密",
}
_REFUSED_OPTION = {  # mmchat.adapters.bundle._REFUSED_OPTIONS
    "it duplicates the base model's layers": "它会复制基础模型的层",
    "it imports Megatron modules": "它会导入 Megatron 模块",
    "it targets parameters instead of modules": "它针对的是参数而不是模块",
    "it changes the base model's token embeddings": "它会改变基础模型的 token 嵌入",
}
_VISUAL_PART = {"projector": "投影器", "soft_prompt": "软提示", "a projector": "投影器", "a soft prompt": "软提示"}


def _adapter_base_mismatch(match: re.Match) -> str:
    """The zip's card names another base than the loaded one (`bundle._card`)."""
    loaded = match["loaded"]
    loaded = "" if loaded == "the loaded base" else f" {loaded}"
    return (f"这个适配器训练所用的基础模型是 {match['base']}（指纹 {match['fp']}），而当前加载的基础模型{loaded}"
            f"（指纹 {match['fp2']}）与它不同")


def _merged(match: re.Match) -> str:
    """`MergedModel.summary`: where the merged model is and how to load it, and its notes."""
    text = (f"已把 '{match['adapter']}' 合并到 {match['folder']}（{_size(match['size'])}，{match['dtype']}）；"
            f"用 transformers 的 {match['cls']}.from_pretrained 和 {match['proc']} 加载")
    if match["visual"]:
        files = _series(match["visual"], "and", "和")
        text += (f"。其 {files} 复制在权重旁边，没有合并：mmchat 的图像通路会读取它们（见 {match['card']}）；"
                 "普通 transformers 不读取")
    if match["base"]:
        text += (f"。基础模型是 {match['base']}：适配器合并到了反量化的 {match['dtype2']} 副本中，"
                 f"所以文件夹是 {match['dtype2']}，不是 4 位")
    return text


_ACCEPTED_FILES = (r"PDF, Word \(\.docx\), Markdown, HTML, plain text \((?P<encodings>[^)]*)\), "
                   r"and PNG/JPEG/WebP images")
_ADAPTER_ZIP = (r"a \.zip of one peft LoRA folder \(at the top level or in one subfolder\) holding "
                r"adapter_config\.json and adapter_model\.safetensors, optionally adapter_card\.json and README\.md "
                r"\(and, for a visual adapter whose card names them, projector\.safetensors and "
                r"soft_prompt\.safetensors\)")
_SIZE = r"[\d.,]+ (?:bytes|[KMG]B)"

# (English message as a regex, matched whole; Chinese template; converters for some groups).
# Ordered: the first match wins, so specific wordings come before general ones.
RULES: list[tuple[str, Template, dict[str, Callable[[str], str]]]] = [
    (r"merged '(?P<adapter>[^']+)' into (?P<folder>.+?) \((?P<size>[^,()]+), (?P<dtype>\w+)\); load it with "
     r"transformers (?P<cls>\w+)\.from_pretrained and (?P<proc>\w+)"
     r"(?:\. Its (?P<visual>.+?) (?:is|are) copied beside the weights, not merged: mmchat's image pathway reads "
     r"them \(see (?P<card>[^)]+)\); plain transformers does not)?"
     r"(?:\. The base was (?P<base>.+?): the adapter was merged into a dequantized (?P<dtype2>\w+) copy, so the "
     r"folder is \w+, not 4-bit)?", _merged, {}),
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
    (r"file is (?P<size>" + _SIZE + r")", "文件大小为 {size}", {"size": _size}),
    (r"the limit is (?P<n>[\d,]+) per file", "每个文件上限为 {n} 个", {}),
    (r"the limit is (?P<n>[\d,]+) pages", "上限为 {n} 页", {}),
    (r"the limit is (?P<n>[\d,]+) levels", "上限为 {n} 层", {}),
    (r"the limit is (?P<limit>[^;]+?) \(refused as a possible zip bomb\)\.?", "上限为 {limit}（疑似 zip 炸弹，已拒绝）。",
     {"limit": _size}),
    (r"the limit is (?P<limit>[^;]+?) \(parsing it would take tens of seconds and gigabytes of memory\)",
     "上限为 {limit}（解析它需要几十秒和数 GB 内存）", {"limit": _size}),
    (r"the limit is (?P<limit>[^;]+?)(?P<stop>\.?)", "上限为 {limit}", {"limit": _size}),
    (r"split it into smaller files\.", "请拆分成较小的文件。", {}),
    (r"split it into smaller files or simplify its structure\.", "请拆分成较小的文件，或简化其结构。", {}),
    (r"splits into more than (?P<n>[\d,]+) chunks", "切分后超过 {n} 个片段", {}),
    (r"has (?P<n>[\d,]+) characters of text", "文字有 {n} 个字符", {}),
    (r"no text to index", "没有可索引的文字", {}),
    (r"the (?P<kind>[^;]+) file contains no text", "这个 {kind} 文件里没有文字", {"kind": _kind}),
    (r"images need the image encoder, which is not loaded", "图片需要图像编码器，但它没有加载", {}),
    (r"not a PDF file \(it has no %PDF- header; found (?P<found>[^;]+)\)", "不是 PDF 文件（没有 %PDF- 文件头；检测到 {found}）",
     {"found": _found}),
    (r"not a Word \.docx file \(not a ZIP archive; found (?P<found>.+)\)",
     "不是 Word .docx 文件（不是 ZIP 压缩包；检测到 {found}）", {"found": _found}),
    (r"not a supported file \(found (?P<found>[^;]+)\)", "不是支持的文件类型（检测到 {found}）", {"found": _found}),
    (r"not a (?P<format>\w+) image \(found (?P<found>[^;]+)\)", "不是 {format} 图片（检测到 {found}）", {"found": _found}),
    (r"not a text file \((?P<reason>[^;]+)\)", "不是文本文件（{reason}）", {"reason": _maybe}),
    (r"it contains NUL characters \(binary data\)", "含有 NUL 字符（二进制数据）", {}),
    (r"it contains (?P<n>[\d,]+) control characters \(binary data\)", "含有 {n} 个控制字符（二进制数据）", {}),
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
    # reading the file (mmchat/files.py read_limited, store_atomic; loaders.py)
    (r"file not found", "找不到文件", {}),
    (r"upload it again\.", "请重新上传。", {}),
    (r"file cannot be read \((?P<error>[^;]+)\)(?P<stop>\.?)", "无法读取文件（{error}）{stop}", {"stop": _stop}),
    (r"not a regular file", "不是普通文件", {}),
    (r"the upload could not be stored on the server \((?P<error>[^;]+)\)", "上传的文件无法保存到服务器上（{error}）", {}),
    (r"the server cannot make a working copy \((?P<error>[^;]+)\)", "服务器无法创建工作副本（{error}）", {}),
    (r"try again later(?P<stop>\.?)", "请稍后再试{stop}", {"stop": _stop}),
    (r"this is an old-format \.doc or a password-protected Office file",
     "这是旧格式的 .doc 文件，或者是受密码保护的 Office 文件", {}),
    (r"save it as \.docx without a password and upload it again", "请另存为不带密码的 .docx 后重新上传", {}),
    (r"(?P<format>[\w ]+?) images are not supported", "不支持 {format} 图片", {}),
    (r"could not be read as (?P<kind>Word \(\.docx\)|[\w ]+) \((?P<error>[^;]+)\)(?P<stop>\.?)",
     "无法按 {kind} 格式读取（{error}）{stop}", {"kind": _kind, "stop": _stop}),
    (r"the PDF is damaged or incomplete and cannot be read \((?P<error>[^;]+)\)", "PDF 已损坏或不完整，无法读取（{error}）", {}),
    (r"re-export it and upload the complete file\.", "请重新导出，再上传完整的文件。", {}),
    # damaged or oversized Word files (loaders.py _read_docx, _check_zip, _check_inflated_sizes)
    (r"not a valid Word \.docx file \(the ZIP container is damaged or incomplete: (?P<error>[^;]+)\)",
     "不是有效的 Word .docx 文件（ZIP 容器已损坏或不完整：{error}）", {}),
    (r"not a valid Word \.docx file \(the ZIP container is damaged: (?P<what>[^;]+)\)",
     "不是有效的 Word .docx 文件（ZIP 容器已损坏：{what}）", {"what": _maybe}),
    (r"(?P<file>[^:;]+) uses an unsupported compression method", "{file} 使用了不支持的压缩方法", {}),
    (r"no local header for (?P<file>[^;]+)", "找不到 {file} 的本地文件头", {}),
    (r"re-save the document and upload it again\.", "请重新保存文档后再上传。", {}),
    (r"a ZIP archive without word/document\.xml, not a Word document",
     "是不含 word/document.xml 的 ZIP 压缩包，不是 Word 文档", {}),
    (r"the \.docx holds (?P<n>[\d,]+) files", ".docx 里有 {n} 个文件", {}),
    (r"the \.docx unpacks to (?P<size>" + _SIZE + r")", ".docx 解压后为 {size}", {"size": _size}),
    (r"the document's XML unpacks to (?P<size>" + _SIZE + r") \((?P<file>[^;]+): (?P<biggest>" + _SIZE + r")\)",
     "文档的 XML 解压后为 {size}（{file}：{biggest}）", {"size": _size, "biggest": _size}),
    (r"split the document into smaller files\.", "请把文档拆分成较小的文件。", {}),
    (r"the \.docx is compressed (?P<ratio>[\d,]+):1", ".docx 的压缩比为 {ratio}:1", {}),
    (r"(?P<file>[^:;]+) inflates to more than the (?P<size>" + _SIZE + r") its ZIP directory declares "
     r"\(refused as a possible zip bomb\)\.", "{file} 解压后超过了 ZIP 目录中声明的 {size}（疑似 zip 炸弹，已拒绝）。",
     {"size": _size}),
    # text, Markdown and HTML (loaders.py _decode_text, _check_markdown_structure, _html_parts)
    (r"the text's encoding is not recognised: (?P<why>.+)", "无法识别文本的编码：{why}", {"why": _nested}),
    (r"not (?P<encoding>[\w/-]+) \(undecodable bytes at offset (?P<offset>[\d,]+)\)",
     "不是 {encoding}（偏移 {offset} 处有无法解码的字节）", {}),
    (r"read as (?P<encoding>[\w/-]+) it is not plausible text \((?P<reason>[^;]+), e\.g\. (?P<sample>[^;]+)\)",
     "按 {encoding} 读取不像正常文本（{reason}，例如 {sample}）", {"reason": _maybe}),
    (r"only (?P<share>\d+%) of its non-ASCII characters are common Chinese characters",
     "非 ASCII 字符中只有 {share} 是常用汉字", {}),
    (r"(?P<odd>[\d,]+) of its (?P<n>[\d,]+) non-ASCII characters are neither letters nor punctuation",
     "{n} 个非 ASCII 字符中有 {odd} 个既不是字母也不是标点", {}),
    (r"(?P<accented>[\d,]+) of its (?P<n>[\d,]+) letters are non-ASCII", "{n} 个字母中有 {accented} 个不是 ASCII 字母", {}),
    (r"its non-ASCII characters come in long runs, not inside words", "非 ASCII 字符成串出现，而不是夹在单词中间", {}),
    (r"the text is UTF-8 but has invalid bytes at offset (?P<offset>[\d,]+)",
     "文本是 UTF-8 编码，但偏移 {offset} 处有无效字节", {}),
    (r"save it as UTF-8 and upload it again", "请另存为 UTF-8 后重新上传", {}),
    (r"accepted encodings: UTF-8, UTF-16 \(with BOM\), GB18030 \(Simplified Chinese\) and Windows-1252/Latin-1 "
     r"\(Western European\)\.", "可接受的编码：UTF-8、UTF-16（带 BOM）、GB18030（简体中文）和 Windows-1252/Latin-1（西欧语言）。", {}),
    (r"the Markdown has more than (?P<n>[\d,]+) sections \(headers\)", "Markdown 有超过 {n} 个章节（标题）", {}),
    (r"the Markdown's nested headers would repeat more than (?P<n>[\d,]+) characters of header text across its "
     r"sections \(the limit for a file's text\)", "Markdown 的多级标题会在各章节中重复超过 {n} 个字符的标题文字（即单个文件的文字上限）", {}),
    (r"flatten its header levels or split it\.", "请减少标题层级，或拆分文件。", {}),
    (r"the HTML nests elements (?:more than (?P<more>[\d,]+)|(?P<depth>[\d,]+)) deep",
     lambda m: f"HTML 元素嵌套了{'超过 ' + m['more'] if m['more'] else ' ' + m['depth']} 层", {}),
    (r"simplify the page or upload it as plain text\.", "请简化页面，或以纯文本上传。", {}),
    (r"the (?P<kind>[^;]+) structure is nested too deeply to read", "{kind} 结构嵌套太深，无法读取", {"kind": _kind}),
    (r"simplify it or upload it as plain text\.", "请简化它，或以纯文本上传。", {}),
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
    # importing a chat (session.py import_chat, _validated_export): the field, its value, what is accepted
    (r"not valid JSON \((?P<error>[^;]+)\)", "不是有效的 JSON（{error}）", {}),
    (r"not an mmchat chat export \(expected format (?P<format>[^;]+)\)", "不是 mmchat 的对话导出文件（应为格式 {format}）", {}),
    (r"unpacks to (?P<size>[\d.,]+ [KMG]B)", "解压后为 {size}", {}),
    (r"the zip has no (?P<file>\S+)", "zip 中没有 {file}", {}),
    (r"accepted: a zip exported by mmchat", "可接受：mmchat 导出的 zip", {}),
    (r"image path (?P<path>[^;]+) points outside the export folder", "图片路径 {path} 指向导出文件夹之外", {}),
    (r"image (?P<file>[^;]+) does not match its hash", "图片 {file} 与它的哈希值不符", {}),
    (r"image (?P<file>[^;]+) is missing from the zip", "zip 中缺少图片 {file}", {}),
    (r"'images' must be an object of sha256 -> entry", "'images' 必须是以 sha256 为键的对象", {}),
    (r"image id (?P<id>[^;]+) is not a sha256 \(64 lower-case hex digits\)",
     "图片 id {id} 不是 sha256（64 个小写十六进制数字）", {}),
    (r"'messages' must be a list of messages", "'messages' 必须是消息列表", {}),
    (r"(?P<where>\S+) must be an object, got (?P<type>\w+)", "{where} 必须是对象，实际是 {type}", {}),
    (r"(?P<where>\S+) must be a list, got (?P<type>\w+)", "{where} 必须是列表，实际是 {type}", {}),
    (r"(?P<where>\S+) must be a list of strings", "{where} 必须是字符串列表", {}),
    (r"(?P<where>\S+) must be a list of image ids", "{where} 必须是图片 id 列表", {}),
    (r"(?P<where>\S+) lacks (?P<key>'.*')", "{where} 缺少 {key}", {}),
    (r"(?P<where>\S+) refers to image (?P<id>[^;]+), which the export lacks", "{where} 引用了图片 {id}，但导出文件里没有它", {}),
    (r"(?P<where>(?:messages\[\d+\]|images\[[0-9a-f]+\]|system_prompt)[\w.\[\]]*) is (?P<value>[^;]+)",
     "{where} 的值是 {value}", {}),
    (r"accepted: (?P<types>(?:str|int|float|bool)(?: or (?:str|int|float|bool|null))*)", "可接受：{types}",
     {"types": _either}),
    (r"accepted: a string", "可接受：字符串", {}),
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
    # ----- adapters (mmchat/adapters/registry.py, store.py, card.py, bundle.py, merge.py) -----
    (r"(?P<folder>.+?): is the name of a shipped adapter; your copy in (?P<root>.+) is not loaded \(rename it "
     r"and the name in its card, or remove that folder\)",
     "{folder}：与自带的适配器同名；你在 {root} 中的副本没有加载（请给它和它卡片里的名字改名，或删除该文件夹）", {}),
    (r"could not be loaded \((?P<error>.+)\)", "无法加载（{error}）", {}),
    (r"trained on (?P<base>.+?) \(fingerprint (?P<fp>[^)]+)\), not the loaded base(?P<loaded>(?: .+?)?) "
     r"\(fingerprint (?P<fp2>[^)]+)\)",
     "训练所用的基础模型是 {base}（指纹 {fp}），不是当前加载的基础模型{loaded}（指纹 {fp2}）", {}),
    (r"no adapter named (?P<name>.+) is loaded; loaded: (?P<names>.+)", "没有加载名为 {name} 的适配器；已加载：{names}", {}),
    # the adapter store (store.py) and adapter names (card.py name_problem)
    (r"no (?P<file>\S+) \(an incomplete adapter\)", "缺少 {file}（适配器不完整）", {}),
    (r"its card names it (?P<name>[^;]+); the folder must have that name", "它的卡片把它命名为 {name}；文件夹必须用这个名字", {}),
    (r"pickled weights \(\.bin/\.pt\) are refused", "pickle 格式的权重（.bin/.pt）一律拒绝", {}),
    (r"no (?P<file>[\w.]+\.(?:safetensors|json))", "缺少 {file}", {}),
    (r"its card names (?P<part>a projector|a soft prompt), (?P<file>[^;]+?), which the folder does not hold "
     r"\(accepted: the safetensors file (?P<writer>\w+) writes\)",
     "它的卡片列出了{part} {file}，但文件夹中没有（可接受：{writer} 写出的 safetensors 文件）", {"part": _VISUAL_PART.get}),
    (r"(?P<file>\S+) is missing or not JSON \((?P<error>[^;]+)\)", "{file} 缺失或不是 JSON（{error}）", {}),
    (r"(?P<file>\S+) has no peft_type", "{file} 没有 peft_type", {}),
    (r"adapter name (?P<name>[^;]+) is not valid; use a-z, 0-9, '-', '_' \(at most (?P<n>\d+)\)",
     "适配器名称 {name} 无效；请使用 a-z、0-9、'-'、'_'（最多 {n} 个字符）", {}),
    (r"adapter name (?P<name>[^;]+) is not valid", "适配器名称 {name} 无效", {}),
    (r"accepted: a-z, 0-9, '-', '_' \(at most (?P<n>\d+)\)", "可接受：a-z、0-9、'-'、'_'（最多 {n} 个字符）", {}),
    (r"adapter name (?P<name>[^;]+) is reserved \((?:the bare base|peft keys adapters by name in torch modules, "
     r"which have one)\); choose another, e\.g\. (?P<example>[^;]+)",
     lambda m: f"适配器名称 {m['name']} 是保留名称（" + ("指不带适配器的基础模型" if "bare base" in m[0] else
                                                    "peft 在 torch 模块中按名称保存适配器，而模块本身已有这个名称")
     + f"）；请换一个，例如 {m['example']}", {}),
    (r"(?P<root>[^;]+) holds the shipped adapters and is read-only; (?P<name>[^;]+) goes to the user store",
     "{root} 存放的是自带的适配器，只读；{name} 应放到用户自己的存储中", {}),
    (r"an adapter named (?P<name>[^;]+) already exists; delete it or choose another name",
     "名为 {name} 的适配器已存在；请删除它或换一个名字", {}),
    (r"(?P<name>'.+') is the name of a shipped adapter; choose another name", "{name} 是自带适配器的名字；请换一个名字", {}),
    (r"no adapter named (?P<name>[^;]+) in the store", "存储中没有名为 {name} 的适配器", {}),
    (r"(?P<name>'.+') is a shipped adapter \((?P<root>[^;]+)\) and read-only; only adapters you uploaded or trained "
     r"can be deleted", "{name} 是自带的适配器（{root}），只读；只能删除你上传或训练的适配器", {}),
    # adapter zips (bundle.py): "<zip>: <what>; accepted: <what is>"
    (r"accepted: " + _ADAPTER_ZIP + r"(?P<names>, with plain relative member names \(no '\.\.', absolute paths, "
     r"drive letters or links\))?",
     "可接受：只含一个 peft LoRA 文件夹（位于顶层或某一个子文件夹中）的 .zip，文件夹中有 adapter_config.json 和 "
     "adapter_model.safetensors，可选 adapter_card.json 和 README.md（视觉适配器的卡片列出了 projector.safetensors 和 "
     "soft_prompt.safetensors 时，也包括这两个文件）{names}",
     {"names": lambda _: "，且成员名须为普通的相对路径（不含 '..'、绝对路径、盘符或链接）"}),
    (r"a zip without a card only when its shapes fit the loaded base", "没有卡片的 zip 只在其形状与当前加载的基础模型相符时才接受", {}),
    (r"the zip is (?P<size>" + _SIZE + r"), over the limit of (?P<limit>" + _SIZE + r")",
     "zip 文件大小为 {size}，超过了上限 {limit}", {"size": _size, "limit": _size}),
    (r"accepted: a zip of at most (?P<size>" + _SIZE + r")", "可接受：不超过 {size} 的 zip 文件", {"size": _size}),
    (r"not a zip archive \(it looks like (?P<kind>[^;]+)\)", "不是 zip 压缩包（看起来是 {kind}）", {}),
    (r"not a zip archive \(it cannot be read as one \((?P<error>[^;]+)\)\)", "不是 zip 压缩包（无法按 zip 读取：{error}）", {}),
    (r"it has (?P<n>[\d,]+) members, over the limit of (?P<limit>[\d,]+)", "包含 {n} 个成员，超过了上限 {limit} 个", {}),
    (r"member (?P<member>[^;]+) (?P<why>" + "|".join(map(re.escape, _ZIP_MEMBER)) + r")", "成员 {member} {why}",
     {"why": _ZIP_MEMBER.get}),
    (r"its members hold over (?P<size>" + _SIZE + r") uncompressed", "成员解压后总计超过 {size}", {"size": _size}),
    (r"accepted: at most (?P<size>" + _SIZE + r") uncompressed in all", "可接受：解压后总计不超过 {size}", {"size": _size}),
    (r"member (?P<member>[^;]+) expands (?P<ratio>[\d,]+)x \((?P<packed>" + _SIZE + r") to (?P<size>" + _SIZE
     + r")\), over the limit of (?P<limit>[\d.]+)x \(a zip bomb\?\)",
     "成员 {member} 解压后膨胀了 {ratio} 倍（{packed} → {size}），超过了上限 {limit} 倍（疑似 zip 炸弹）",
     {"packed": _size, "size": _size}),
    (r"accepted: members that expand at most (?P<ratio>[\d.]+)x", "可接受：解压后膨胀不超过 {ratio} 倍的成员", {}),
    (r"(?P<member>'[^;]*') holds pickled weights, which are refused \(loading them can run code\)",
     "{member} 是 pickle 格式的权重，已拒绝（加载它可能会执行代码）", {}),
    (r"accepted: (?P<file>\S+) \(safetensors\) only", "可接受：仅限 {file}（safetensors 格式）", {}),
    (r"unexpected file (?P<member>[^;]+)", "含有不应有的文件 {member}", {}),
    (r"(?P<file>\S+) appears twice \((?P<first>[^;]+) and (?P<second>[^;]+)\)",
     "{file} 出现了两次（{first} 和 {second}）", {}),
    (r"its files are spread over several folders \((?P<where>[^;]+)\)", "文件分散在多个文件夹中（{where}）",
     {"where": lambda w: w.replace("(top level)", "（顶层）")}),
    (r"its files are nested too deep \((?P<path>[^;]+)\)", "文件嵌套得太深（{path}）", {}),
    (r"no (?P<file>\S+) in it", "其中没有 {file}", {}),
    (r"(?P<file>\S+) is (?P<size>" + _SIZE + r"), over the limit of (?P<limit>" + _SIZE + r")",
     "{file} 大小为 {size}，超过了上限 {limit}", {"size": _size, "limit": _size}),
    (r"accepted: weights of at most (?P<size>" + _SIZE + r")", "可接受：不超过 {size} 的权重文件", {"size": _size}),
    (r"(?P<file>\S+) is over the limit of (?P<limit>" + _SIZE + r")", "{file} 超过了上限 {limit}", {"limit": _size}),
    (r"(?P<file>\S+) cannot be read from the zip \((?P<error>[^;]+)\)", "无法从 zip 中读取 {file}（{error}）", {}),
    (r"(?P<file>\S+) is not valid JSON \((?P<error>[^;]+)\)", "{file} 不是有效的 JSON（{error}）", {}),
    (r"(?P<file>\S+) is not a JSON object", "{file} 不是 JSON 对象", {}),
    (r"(?P<file>\S+) has peft_type (?P<type>[^;]+), not a LoRA adapter",
     "{file} 的 peft_type 是 {type}，不是 LoRA 适配器", {}),
    (r"(?P<file>\S+) has rank r=(?P<r>[^;]+), outside 1\.\.(?P<max>\d+)", "{file} 的秩 r={r}，不在 1..{max} 范围内", {}),
    (r"(?P<file>\S+) has a rank_pattern outside 1\.\.(?P<max>\d+) \((?P<pattern>[^;]+?)\)?",
     "{file} 的 rank_pattern 超出了 1..{max}（{pattern}）", {}),
    (r"(?P<file>\S+) has lora_alpha (?P<alpha>[^;]+), not a number", "{file} 的 lora_alpha 是 {alpha}，不是数字", {}),
    (r"(?P<file>\S+) has a target_modules pattern of (?P<n>[\d,]+) characters",
     "{file} 的 target_modules 模式长达 {n} 个字符", {}),
    (r"accepted: a pattern of at most (?P<n>\d+) characters, or a list of module names",
     "可接受：不超过 {n} 个字符的模式，或模块名列表", {}),
    (r"(?P<file>\S+) has target_modules (?P<targets>[^;]+), not a valid regular expression \((?P<error>[^;]+)\)",
     "{file} 的 target_modules {targets} 不是有效的正则表达式（{error}）", {}),
    (r"(?P<file>\S+) has target_modules (?P<targets>[^;]+)", "{file} 的 target_modules 是 {targets}", {}),
    (r"accepted: a list of module names, or one regular expression", "可接受：模块名列表，或一个正则表达式", {}),
    (r"(?P<file>\S+) has init_lora_weights (?P<init>[^;]+): loading it would rewrite the base model's weights",
     "{file} 的 init_lora_weights 是 {init}：加载它会改写基础模型的权重", {}),
    (r"accepted: init_lora_weights true, false or \"gaussian\" \(convert PiSSA/OLoRA/LoftQ adapters to plain LoRA "
     r"with peft's path_initial_model_for_weight_conversion\)",
     "可接受：init_lora_weights 为 true、false 或 \"gaussian\"（PiSSA/OLoRA/LoftQ 适配器请先用 peft 的 "
     "path_initial_model_for_weight_conversion 转换成普通 LoRA）", {}),
    (r"(?P<file>\S+) sets (?P<key>\w+): (?P<why>" + "|".join(map(re.escape, _REFUSED_OPTION)) + r")",
     "{file} 设置了 {key}：{why}", {"why": _REFUSED_OPTION.get}),
    (r"accepted: plain LoRA adapters on the base's modules", "可接受：作用于基础模型各模块的普通 LoRA 适配器", {}),
    (r"accepted: (?P<file>\S+) of a peft LoRA adapter \(peft_type LORA, r 1\.\.(?P<max>\d+)\)",
     "可接受：peft LoRA 适配器的 {file}（peft_type 为 LORA，r 在 1..{max} 之间）", {}),
    (r"(?P<file>\S+) is too short to be safetensors \((?P<n>\d+) bytes\)", "{file} 太短，不是 safetensors 文件（{n} 字节）", {}),
    (r"(?P<file>\S+) is not safetensors \(header length (?P<n>\d+) does not fit the file\)",
     "{file} 不是 safetensors 文件（头部长度 {n} 与文件不符）", {}),
    (r"(?P<file>\S+) has a header that is not valid JSON \((?P<error>[^;]+)\)", "{file} 的头部不是有效的 JSON（{error}）", {}),
    (r"(?P<file>\S+) has a header that is not a JSON object", "{file} 的头部不是 JSON 对象", {}),
    (r"(?P<file>\S+) holds no tensors", "{file} 里没有张量", {}),
    (r"accepted: (?P<file>\S+) in the safetensors format", "可接受：safetensors 格式的 {file}", {}),
    (r"tensor (?P<key>[^;]+) in (?P<file>\S+) has dtype (?P<dtype>[^;]+)", "{file} 中的张量 {key} 的数据类型是 {dtype}", {}),
    (r"accepted: tensors of dtype (?P<dtypes>[^;]+)", "可接受：数据类型为 {dtypes} 的张量", {}),
    (r"tensor (?P<key>[^;]+) in (?P<file>\S+) has a malformed shape or byte range",
     "{file} 中的张量 {key} 的形状或字节范围格式有误", {}),
    (r"tensor (?P<key>[^;]+) in (?P<file>\S+): its byte range does not match its shape (?P<shape>\[.*\])",
     "{file} 中的张量 {key}：字节范围与它的形状 {shape} 不符", {}),
    (r"(?P<file>\S+) has overlapping or missing tensor data", "{file} 的张量数据有重叠或缺失", {}),
    (r"(?P<file>\S+) is (?P<size>" + _SIZE + r") but its header describes (?P<described>" + _SIZE + r")",
     "{file} 大小为 {size}，但它的头部描述的是 {described}", {"size": _size, "described": _size}),
    (r"target_modules (?P<targets>[^;]+) matches no module of the loaded base",
     "target_modules {targets} 匹配不到当前加载的基础模型中的任何模块", {}),
    (r"target module (?P<target>[^;]+) does not exist in the loaded base", "当前加载的基础模型中没有目标模块 {target}", {}),
    (r"modules_to_save names (?P<target>[^;]+), which does not exist in the loaded base",
     "modules_to_save 列出的 {target} 在当前加载的基础模型中不存在", {}),
    (r"accepted: target modules the loaded base has, e\.g\. (?P<names>[^;]+)", "可接受：当前加载的基础模型中有的目标模块，例如 {names}", {}),
    (r"tensor (?P<key>[^;]+) in (?P<file>\S+) is not named the way peft saves LoRA weights",
     "{file} 中的张量 {key} 的命名方式不是 peft 保存 LoRA 权重的方式", {}),
    (r"accepted: tensors named (?P<pattern>[^;]+)", "可接受：命名为 {pattern} 的张量", {}),
    (r"tensor (?P<key>[^;]+) is for module (?P<module>[^;]+), which does not exist in the loaded base",
     "张量 {key} 属于模块 {module}，而当前加载的基础模型中没有这个模块", {}),
    (r"accepted: adapters trained on the loaded base", "可接受：在当前加载的基础模型上训练的适配器", {}),
    (r"tensor (?P<key>[^;]+) has shape (?P<shape>\[[^]]*\]); module (?P<module>[^;]+) of the loaded base has weight "
     r"(?P<weight>\[[^]]*\])", "张量 {key} 的形状是 {shape}；当前加载的基础模型中模块 {module} 的权重形状是 {weight}", {}),
    (r"tensor (?P<key>[^;]+) has shape (?P<shape>\[[^]]*\]), not a LoRA matrix \(2-D\)",
     "张量 {key} 的形状是 {shape}，不是 LoRA 矩阵（二维）", {}),
    (r"accepted: LoRA on linear and embedding layers", "可接受：作用于线性层和嵌入层的 LoRA", {}),
    (r"tensor (?P<key>[^;]+) has rank (?P<rank>\d+), outside 1\.\.(?P<max>\d+)",
     "张量 {key} 的秩是 {rank}，不在 1..{max} 范围内", {}),
    (r"accepted: LoRA rank 1\.\.(?P<max>\d+)", "可接受：LoRA 秩在 1..{max} 之间", {}),
    (r"tensor (?P<key>[^;]+) has shape (?P<shape>\[[^]]*\]), but module (?P<module>[^;]+) of the loaded base has "
     r"(?P<n>\d+) (?P<side>in|out)-features", "张量 {key} 的形状是 {shape}，但当前加载的基础模型中模块 {module} 的{side}特征数是 {n}",
     {"side": {"in": "输入", "out": "输出"}.get}),
    (r"(?P<file>\S+) holds no LoRA weights \(lora_A / lora_B\)", "{file} 里没有 LoRA 权重（lora_A / lora_B）", {}),
    (r"module (?P<module>[^;]+) has LoRA matrices of different ranks (?P<ranks>\[.*\])",
     "模块 {module} 的 LoRA 矩阵秩不一致（{ranks}）", {}),
    (r"the name (?P<name>[^;]+) is not valid", "名称 {name} 无效", {}),
    (r"accepted: a name of a-z, 0-9, '-', '_' \(at most (?P<n>\d+), starting with a letter or digit\), not a "
     r"reserved name such as 'base' or 'items'",
     "可接受：由 a-z、0-9、'-'、'_' 组成的名称（最多 {n} 个字符，以字母或数字开头），且不是 'base'、'items' 这类保留名称", {}),
    (r"accepted: an mmchat (?P<file>\S+), or none", "可接受：mmchat 的 {file}，或者不带", {}),
    (r"the adapter was trained on (?P<base>[^;]+?) \(fingerprint (?P<fp>[^)]+)\), but the loaded base is "
     r"(?P<loaded>[^;]+?) \(fingerprint (?P<fp2>[^)]+)\)", _adapter_base_mismatch, {}),
    (r"(?P<card>\S+) says rank (?P<rank>\d+) but (?P<config>\S+) says r=(?P<r>\d+)",
     "{card} 写的秩是 {rank}，但 {config} 写的是 r={r}", {}),
    (r"it has no (?P<card>\S+), and its LoRA shapes could not all be checked against the loaded base",
     "其中没有 {card}，而且它的 LoRA 形状无法全部与当前加载的基础模型核对", {}),
    (r"(?P<card>\S+) names its (?P<key>projector|soft_prompt) file (?P<file>[^;]+)", "{card} 把它的{key}文件命名为 {file}",
     {"key": _VISUAL_PART.get}),
    (r"(?P<card>\S+) names a (?P<key>projector|soft_prompt), (?P<file>\S+), which the zip does not hold",
     "{card} 列出了{key} {file}，但 zip 中没有它", {"key": _VISUAL_PART.get}),
    (r"(?P<file>\S+) is in the zip but no (?P<card>\S+) in it names it \((?P<key>projector|soft_prompt)\)",
     "zip 中有 {file}，但没有 {card} 列出它（{key}）", {}),
    (r"accepted: a visual adapter's (?P<projector>\S+) \(and (?P<soft>\S+)\) with an (?P<card>\S+) naming them under "
     r"those names", "可接受：视觉适配器的 {projector}（及 {soft}），并附有以这些名称列出它们的 {card}", {}),
    (r"its projector cannot be checked: the loaded base's embedding width is not known",
     "无法检查它的投影器：不知道当前加载的基础模型的嵌入宽度", {}),
    (r"accepted: a visual adapter uploaded with the loaded base's module_shapes",
     "可接受：随当前加载的基础模型的 module_shapes 一起上传的视觉适配器", {}),
    (r"accepted: a visual adapter whose (?P<projector>\S+) maps the features its card names to (?P<n>\d+)-d "
     r"embeddings and whose (?P<soft>\S+) holds vectors of width (?P<width>\d+)",
     "可接受：视觉适配器，其 {projector} 把卡片所列的特征映射为 {n} 维嵌入，其 {soft} 中向量的宽度为 {width}", {}),
    (r"(?P<file>\S+) expands beyond its declared (?P<size>" + _SIZE + r")", "{file} 解压后超出了声明的大小 {size}",
     {"size": _size}),
    (r"(?P<file>\S+) is damaged in the zip \((?P<done>\d+) of (?P<total>\d+) bytes\)",
     "{file} 在 zip 中已损坏（只读到 {done}/{total} 字节）", {}),
    (r"(?P<file>\S+) is damaged in the zip \((?P<error>[^;]+)\)", "{file} 在 zip 中已损坏（{error}）", {}),
    (r"(?P<file>\S+) changed while it was read", "{file} 在读取过程中被改动了", {}),
    (r"peft cannot read (?P<file>\S+) \((?P<error>[^;]+)\)", "peft 无法读取 {file}（{error}）", {}),
    (r"adapter (?P<name>'.+?') has no (?P<file>\S+); it cannot be exported", "适配器 {name} 缺少 {file}，无法导出", {}),
    # merging an adapter into its base (merge.py)
    (r"(?P<path>[^;]+) already exists; choose a new folder for the merged model or delete it",
     "{path} 已存在；请为合并后的模型另选一个文件夹，或删除它", {}),
    (r"adapter (?P<name>'.+?') was trained on (?P<base>[^;]+?) \(fingerprint (?P<fp>[^)]+)\), but the base given to "
     r"merge into is (?P<given>[^;]+?) \(fingerprint (?P<fp2>[^)]+)\); merge it into the base it was trained on",
     "适配器 {name} 训练所用的基础模型是 {base}（指纹 {fp}），但要合并进去的基础模型是 {given}（指纹 {fp2}）；"
     "请把它合并到训练时所用的基础模型中", {"given": lambda g: "另一个模型" if g == "another model" else g}),
    (r"adapter (?P<name>'.+?') has no (?P<file>\S+); only safetensors adapters are merged",
     "适配器 {name} 缺少 {file}；只能合并 safetensors 格式的适配器", {}),
    (r"adapter (?P<name>'.+?') could not be merged \((?P<error>[^;]+)\)", "适配器 {name} 无法合并（{error}）", {}),
    (r"the merged model was written with pickle-format files \((?P<files>[^;]+)\); only safetensors are accepted",
     "合并后的模型写出了 pickle 格式的文件（{files}）；只接受 safetensors", {}),
    (r"adapter (?P<name>'.+?'): its card names a (?P<key>projector|soft_prompt), (?P<file>[^;]+?), which "
     r"(?P<folder>[^;]+?) does not hold; nothing was merged",
     "适配器 {name}：它的卡片列出了{key} {file}，但 {folder} 中没有；没有合并任何内容",
     {"key": _VISUAL_PART.get}),
    (r"the model given to merge into already carries LoRA layers \(is it the serving model\?\); merge into a fresh "
     r"copy from (?P<function>\S+)", "要合并进去的模型已经带有 LoRA 层（是不是正在服务的模型？）；请合并到 {function} 得到的新副本中", {}),
    (r"the base is quantized \((?P<label>[^;]+?)\) and transformers cannot dequantize it \((?P<error>[^;]+)\); "
     r"merging needs a base in bfloat16/float32 or bitsandbytes 4-/8-bit",
     "基础模型经过量化（{label}），transformers 无法对它反量化（{error}）；合并需要 bfloat16/float32 或 bitsandbytes "
     "4/8 位的基础模型", {}),
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
    (r"a training run is already going: (?P<run>\S+) \(adapter (?P<name>[^;]+), step "
     r"(?P<step>\d+)/(?P<total>\d+|\?)\); one run trains at a time — stop it or wait",
     "已经有一个训练在运行：{run}（适配器 {name}，第 {step}/{total} 步）；一次只能训练一个——请停止它或等它结束", {}),
    (r"a training run is already going: (?P<rest>.+)", "已经有一个训练在运行：{rest}", {}),
    (r"run (?P<run>\S+) is already training", "运行 {run} 已经在训练中", {}),
    # the run manager (runs.py) and the fine-tuning service (service.py)
    (r"no training run (?P<run>[^;]+); runs: (?P<known>[^;]+)", "没有训练运行 {run}；已有的运行：{known}",
     {"known": lambda k: "无" if k == "none" else k}),
    (r"a run named (?P<run>\S+) was started this second; try again", "名为 {run} 的运行刚在这一秒启动；请再试一次", {}),
    (r"could not create the run folder in (?P<root>[^;]+?): (?P<error>[^;]+)", "无法在 {root} 中创建运行文件夹：{error}", {}),
    (r"run (?P<run>\S+) is not training \(it is (?P<state>\w+)\)", "运行 {run} 不在训练中（当前状态：{state}）",
     {"state": lambda state: term("state", state)}),
    (r"run (?P<run>\S+) stopped before its first step ended: nothing to keep", "运行 {run} 在第一步结束前就停止了：没有可保留的内容", {}),
    (r"run (?P<run>\S+) has finished; its adapter is (?P<adapter>[^;]+)", "运行 {run} 已经完成；它的适配器是 {adapter}", {}),
    (r"the loaded model (?P<name>[^;]+?) is not one of the presets the trainer can load \((?P<presets>[^;]+)\)",
     "当前加载的模型 {name} 不是训练器能加载的预设之一（{presets}）", {}),
    (r"(?P<what>the built-in shapes dataset|a visual preset) trains the offline model's image pathway; the loaded "
     r"model is (?P<preset>[^;]+?) \((?P<kind>\w+)\)\. Start the app with --preset offline to train it",
     "{what}训练的是 offline 模型的图像通路；当前加载的模型是 {preset}（{kind}）。请用 --preset offline 启动应用来训练它",
     {"what": {"the built-in shapes dataset": "内置的 shapes 数据集", "a visual preset": "视觉预设"}.get}),
    (r"(?P<what>eval_fraction|max_length|prompt tokens) (?P<value>[^;]+) is out of range", "{what} {value} 超出范围",
     {"what": lambda w: "提示 token 数" if w == "prompt tokens" else w}),
    (r"accepted: above 0 and below 0\.5", "可接受：大于 0 且小于 0.5", {}),
    (r"accepted: an integer (?P<low>\d+)\.\.(?P<high>\d+)", "可接受：{low}..{high} 之间的整数", {}),
    (r"accepted: a whole number (?P<low>\d+)\.\.(?P<high>\d+) \((?P<usual>[\d-]+) is usual\)",
     "可接受：{low}..{high} 之间的整数（通常为 {usual}）", {}),
    (r"built-in dataset (?P<name>[^;]+) does not exist", "内置数据集 {name} 不存在", {}),
    (r"choose a built-in dataset or upload a file \(JSONL, JSON or zip\)",
     "请选择一个内置数据集，或上传一个文件（JSONL、JSON 或 zip）", {}),
    (r"preset (?P<preset>[^;]+) does not exist", "预设 {preset} 不存在", {}),
    (r"targets (?P<targets>[^;]+) are not valid", "目标 {targets} 无效", {}),
    (r"visual targets (?P<targets>[^;]+) are not valid", "视觉目标 {targets} 无效", {}),
    (r"max_steps (?P<n>\d+) is above this app's cap of (?P<cap>\d+) \(\[finetune\] max_steps\)",
     "max_steps {n} 超过了本应用的上限 {cap}（[finetune] max_steps）", {}),
    (r"projector-first steps (?P<value>[^;]+) are not valid for two-stage training",
     "两阶段训练中“先训练投影器”的步数 {value} 无效", {}),
    (r"accepted: a whole number of steps >= 1 \(the projector alone, then both\)",
     "可接受：不小于 1 的整数步数（先单独训练投影器，再两者一起训练）", {}),
    (r"fine-tuning is switched off here \(\[finetune\] enabled = false\)", "这里已关闭微调（[finetune] enabled = false）", {}),
    (r"visual presets \((?P<presets>[^;]+?)\) train the image pathway on the built-in shapes dataset; "
     r"(?P<source>[^;]+) is not it: choose shapes, or a text preset \((?P<text>[^;]+)\)",
     "视觉预设（{presets}）是在内置的 shapes 数据集上训练图像通路的；{source} 不是这个数据集：请选择 shapes，或选择一个文本预设（{text}）",
     {}),
    (r"(?P<source>[^;]+) trains the image pathway: choose a visual preset \((?P<presets>[^;]+)\)",
     "{source} 训练的是图像通路：请选择一个视觉预设（{presets}）", {}),
    (r"max_length changed from (?P<old>\d+) to (?P<new>\d+) since the dataset was checked; validate it again",
     "检查数据集之后 max_length 从 {old} 改成了 {new}；请重新验证", {}),
    # ----- last: any other "accepted: ..." part, its list as it is -----
    (r"accepted: (?P<what>.+)", "可接受：{what}", {}),
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
