"""Configuration: frozen dataclasses, model presets, one TOML file, env and CLI overrides.

Precedence, lowest first: dataclass defaults < TOML file (`--config` or `MMCHAT_CONFIG`) <
environment (`GRADIO_SERVER_NAME`, `GRADIO_SERVER_PORT`, `MMCHAT_PRESET`, ...) < CLI flags.
Every field carries `help` metadata and `__post_init__` checks name the bad value and list
the valid ones. This module imports no torch, transformers or gradio: deciding *what* to
load is separate from loading it (see `mmchat.backends.registry`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mmchat.errors import ConfigError

SOURCE_SCHEMES = ("hf-hub:", "local-dir:", "builtin:")
BACKEND_KINDS = ("llava", "offline", "tiny")
QUANTIZATIONS = ("none", "nf4")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ENCODER_KINDS = ("auto", "open_clip", "standin")
# Languages a preset can declare its model writes well (ISO 639-1). Questions are told apart
# only as Chinese or not (`mmchat.language`), so these two are the ones that change anything.
LANGUAGES = ("en", "zh")


def _help(text: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"help": text})


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{what} {value!r} is not valid; choose one of: {', '.join(choices)}")


def check_languages(what: str, languages: tuple[str, ...]) -> None:
    """A non-empty tuple of distinct codes from `LANGUAGES` (e.g. `("en",)` or `("en", "zh")`)."""
    if not isinstance(languages, tuple) or not languages:
        raise ConfigError(f"{what} {languages!r} is not valid; list one or more of: {', '.join(LANGUAGES)}")
    for code in languages:
        _check_choice(f"{what} entry", code, LANGUAGES)
    if len(set(languages)) != len(languages):
        raise ConfigError(f"{what} {languages!r} names a language twice")


def _check_port(what: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"{what} {port} is out of range; use 1..65535")


def check_source(source: str) -> None:
    if not source.startswith(SOURCE_SCHEMES):
        raise ConfigError(
            f"model source {source!r} is not valid; write it as 'hf-hub:ORG/NAME', "
            "'local-dir:/path/to/model' or 'builtin:NAME'"
        )


def split_source(source: str) -> tuple[str, str]:
    """`'hf-hub:org/name'` -> `('hf-hub', 'org/name')`."""
    check_source(source)
    scheme, _, rest = source.partition(":")
    if not rest:
        raise ConfigError(f"model source {source!r} names nothing after {scheme}:")
    return scheme, rest


@dataclass(frozen=True)
class AnswerPolicy:
    """How much retrieved text a model is given, and how its decoding is kept from looping.

    Small models lose the question in long contexts and repeat themselves under greedy
    decoding, so each preset says how many sources it gets, how long each may be (trimmed to
    the sentences that best match the question), and its repetition controls.
    """

    max_sources: int = _help("retrieved sources put into one prompt, at most", 4)
    source_chars: int = _help("characters kept of each source (its best sentences); 0 keeps whole chunks", 0)
    repetition_penalty: float = _help("transformers' repetition_penalty (1.0 = off)", 1.0)
    no_repeat_ngram_size: int = _help("never repeat an n-gram of this many tokens (0 = off)", 0)

    def __post_init__(self) -> None:
        if not 1 <= self.max_sources <= 32:
            raise ConfigError(f"max_sources {self.max_sources} is out of range; use 1..32")
        if self.source_chars < 0:
            raise ConfigError(f"source_chars {self.source_chars} must be >= 0 (0 keeps whole chunks)")
        if not 1.0 <= self.repetition_penalty <= 2.0:
            raise ConfigError(f"repetition_penalty {self.repetition_penalty} is out of range; use 1.0..2.0")
        if not 0 <= self.no_repeat_ngram_size <= 20:
            raise ConfigError(f"no_repeat_ngram_size {self.no_repeat_ngram_size} is out of range; use 0..20")


@dataclass(frozen=True)
class ModelPreset:
    name: str = _help("preset name shown in the UI")
    kind: str = _help(f"backend kind: {', '.join(BACKEND_KINDS)}")
    source: str = _help("'hf-hub:ID', 'local-dir:PATH' or 'builtin:NAME'")
    description: str = _help("one line shown in the UI", "")
    quantization: str = _help("'nf4' (bitsandbytes 4-bit, CUDA) or 'none'", "none")
    device: str = _help("'auto', 'cpu' or 'cuda'", "auto")
    dtype: str = _help("compute dtype: auto, float32, bfloat16, float16", "auto")
    context_length: int = _help("tokens the model can attend to (prompt + answer)", 4096)
    requires_cuda: bool = _help("refuse to load without a CUDA device", False)
    answer: AnswerPolicy = _help("sources per prompt and repetition control", AnswerPolicy())
    languages: tuple[str, ...] = _help(
        "languages the model writes well (codes: en, zh); a Chinese question to a model without 'zh' "
        "is answered with the supporting passages and a note in Chinese, not by the model", ("en",)
    )

    def __post_init__(self) -> None:
        _check_choice("backend kind", self.kind, BACKEND_KINDS)
        check_languages("languages", self.languages)
        _check_choice("quantization", self.quantization, QUANTIZATIONS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        check_source(self.source)
        if self.context_length < 256:
            raise ConfigError(f"context_length {self.context_length} is too small; use >= 256")


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="llava-1.5-7b-nf4",
            kind="llava",
            source="hf-hub:llava-hf/llava-1.5-7b-hf",
            description="LLaVA-1.5 7B, 4-bit NF4 (bitsandbytes) on CUDA",
            quantization="nf4",
            device="cuda",
            dtype="bfloat16",
            context_length=4096,
            requires_cuda=True,
            languages=("en", "zh"),  # Vicuna's data (ShareGPT) holds Chinese; LLaVA-1.5 answers in it
        ),
        ModelPreset(
            name="llava-interleave-0.5b",
            kind="llava",
            source="hf-hub:llava-hf/llava-interleave-qwen-0.5b-hf",
            description="LLaVA-Interleave Qwen 0.5B, runs on CPU",
            device="auto",
            dtype="auto",
            context_length=8192,
            languages=("en", "zh"),  # Qwen1.5-0.5B base: trained on Chinese and English
        ),
        ModelPreset(
            name="offline",
            kind="offline",
            source="builtin:smollm2-135m-instruct",
            description=(
                "Offline stand-in: SmolLM2-135M-Instruct (shipped GGUF) + EfficientNet-Lite0 "
                "image labels. Not a vision-language model."
            ),
            device="cpu",
            dtype="float32",
            context_length=2048,
            # A 135M model copes with two short sources; longer prompts make it loop and
            # slow its first token (measured: 1,100-1,500-token prompts, 5-6 s, answers looping).
            answer=AnswerPolicy(max_sources=2, source_chars=500, repetition_penalty=1.1, no_repeat_ngram_size=4),
            # SmolLM2 was trained on English; asked in Chinese it copies numbers wrongly and
            # invents words (measured on the demo corpus: "4096 × 4032 = 178564", "龙云累茶").
            languages=("en",),
        ),
        ModelPreset(
            name="tiny",
            kind="tiny",
            source="builtin:tiny-llava",
            description="Tiny random LLaVA built from configs (tests only; output is noise)",
            device="cpu",
            dtype="float32",
            context_length=1024,
            answer=AnswerPolicy(max_sources=12),  # tests of context fitting need many sources
            # Stands in for the LLaVA presets in tests (same loader), so it declares what they do.
            languages=("en", "zh"),
        ),
    )
}
GPU_PRESET = "llava-1.5-7b-nf4"
OFFLINE_PRESET = "offline"


@dataclass(frozen=True)
class ModelConfig:
    preset: str = _help("a preset name, or 'auto' (GPU preset with CUDA, else offline)", "auto")
    source: str = _help("override the preset's source ('hf-hub:ID' / 'local-dir:PATH')", "")
    quantization: str = _help("override the preset's quantization ('nf4' or 'none')", "")
    cache_dir: str = _help("where converted weights are cached", "~/.cache/mmchat")
    languages: tuple[str, ...] = _help(
        "override the preset's languages (e.g. ['en'] for a local-dir model that writes English only); "
        "empty keeps the preset's", ()
    )

    def __post_init__(self) -> None:
        if self.preset != "auto":
            _check_choice("model preset", self.preset, tuple(PRESETS))
        if self.languages:
            check_languages("model languages", self.languages)
        if self.source:
            check_source(self.source)
        if self.quantization:
            _check_choice("quantization", self.quantization, QUANTIZATIONS)


@dataclass(frozen=True)
class EncoderConfig:
    kind: str = _help("image encoder: 'auto', 'open_clip' or 'standin' (offline)", "auto")
    model: str = _help("open_clip architecture", "ViT-B-32")
    pretrained: str = _help(
        "open_clip weights tag, 'hf-hub:ID' or 'local-dir:PATH'", "laion2b_s34b_b79k"
    )
    top_labels: int = _help("zero-shot labels shown with each image", 3)

    def __post_init__(self) -> None:
        _check_choice("encoder kind", self.kind, ENCODER_KINDS)
        if not 1 <= self.top_labels <= 10:
            raise ConfigError(f"top_labels {self.top_labels} is out of range; use 1..10")


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = _help("largest accepted upload, bytes", 20 * 1024 * 1024)
    max_pixels: int = _help("largest accepted image, width x height", 40_000_000)
    max_aspect_ratio: float = _help(
        "longest side / shortest side an image may have: encoders resize the short side to "
        "their input size, so a 16000 x 1 strip would become millions of pixels", 20.0
    )
    max_images_per_message: int = _help("images one message may carry", 4)
    max_prompt_chars: int = _help("longest accepted message text, characters", 8000)
    formats: tuple[str, ...] = _help(
        "accepted image formats (by content)", ("PNG", "JPEG", "WEBP", "GIF", "BMP")
    )

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_images_per_message", "max_prompt_chars"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"limits.{name} must be positive, got {getattr(self, name)}")
        if not self.max_aspect_ratio >= 1:
            raise ConfigError(f"limits.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


@dataclass(frozen=True)
class GenerationDefaults:
    max_new_tokens: int = _help("default answer length limit, tokens", 256)
    temperature: float = _help("default sampling temperature (0 = greedy: reproducible answers)", 0.0)
    top_p: float = _help("default nucleus sampling mass", 0.9)
    system_prompt: str = _help(
        "default system prompt", "You are a helpful assistant. Answer briefly and accurately."
    )


@dataclass(frozen=True)
class ServerConfig:
    host: str = _help("address to bind; 127.0.0.1 keeps the app private", "127.0.0.1")
    port: int = _help("port to bind", 7860)
    concurrency_limit: int = _help("generations running at once (one model is shared)", 1)
    max_queue: int = _help("requests waiting before new ones are turned away", 32)
    share: bool = _help("create a public gradio share link", False)
    allowed_hosts: tuple[str, ...] = _help(
        "extra Host header names the server answers besides 127.0.0.1, localhost and host "
        "(e.g. '*.hf.space'; comma-separated in MMCHAT_ALLOWED_HOSTS); others get 400", ()
    )
    allowed_origins: tuple[str, ...] = _help(
        "extra browser origins allowed to call the app besides its own (e.g. 'https://*.hf.space'; "
        "comma-separated in MMCHAT_ALLOWED_ORIGINS); a request with another Origin header gets 403", ()
    )

    def __post_init__(self) -> None:
        _check_port("port", self.port)
        if self.concurrency_limit < 1:
            raise ConfigError(f"concurrency_limit must be >= 1, got {self.concurrency_limit}")


PROJECT_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class KnowledgeConfig:
    enabled: bool = _help("offer the knowledge base (RAG) in the chat and the Knowledge tab", True)
    path: str = _help(
        "knowledge base folder: the embedded Chroma store and kept file copies "
        "(default: knowledge/.store in the project)", ""
    )
    host: str = _help("Chroma server host; when set, chunks live on that server, not embedded", "")
    port: int = _help("Chroma server port", 8000)
    collection_prefix: str = _help("prefix of the Chroma collection names", "mmchat")
    embedder: str = _help(
        "text embedder: 'auto' (= builtin:use-multilingual, USE multilingual v3, shipped), "
        "'builtin:all-MiniLM-L6-v2' (English only), 'builtin:multilingual-e5-small', 'hf-hub:ID' or "
        "'local-dir:PATH'; changing it re-embeds the stored chunks (the old index serves meanwhile)", "auto"
    )
    chunk_size: int = _help("chunk length in embedder tokens; 0 sizes it for the embedder", 0)
    chunk_overlap: int = _help("tokens shared by neighbouring chunks; -1 = a fifth of chunk_size", -1)
    top_k: int = _help("text chunks put into the prompt", 4)
    min_score: float = _help("dense cosine below which a chunk does not count as a dense match", 0.15)
    image_top_k: int = _help("indexed images shown (and optionally sent) with an answer", 2)
    image_min_score: float = _help(
        "cosine below which a retrieved image is not shown; 0 picks a value for the encoder", 0.0
    )
    min_relevance: float = _help(
        "relevance (0..1, calibrated on tests/fixtures/rag_eval: the highest floor that keeps every "
        "answer chunk the default embedder finds) below which a chunk is not cited; 0 turns the floor off", 0.22
    )
    image_match_min_score: float = _help(
        "cosine below which an indexed image does not count as a match for a chat photo "
        "(image to image); 0 picks a value for the encoder", 0.0
    )
    image_question_min_relevance: float = _help(
        "relevance a source needs (with two of the question's own terms) to be used for a question "
        "about an attached photo that does not mention the documents", 0.6
    )
    whole_document_max_chars: int = _help("longest document the 'whole document' option sends", 12000)
    max_file_mb: int = _help("largest accepted knowledge upload, MB", 50)
    max_parse_seconds: float = _help(
        "reading one knowledge upload (parse + split into chunks) may take this long before it "
        "is refused; checked between steps, so structure limits below bound each step", 60.0
    )
    max_html_depth: int = _help(
        "deepest element nesting an HTML upload may have (html.parser nests unclosed <p>/<li>, "
        "so old hand-written pages run deep; the text walk is linear at any depth)", 2000
    )
    max_sections: int = _help("most Markdown sections (headers) one upload may have", 5000)
    max_chunks: int = _help("most chunks one document may be split into", 10000)
    max_docx_xml_mb: int = _help(
        "largest XML text (word/*.xml, as the ZIP directory declares it) a .docx may unpack to, MB",
        32,
    )
    seed_demo: bool = _help("index knowledge/demo and knowledge/images on first start", True)

    def __post_init__(self) -> None:
        _check_port("knowledge port", self.port)
        if self.embedder != "auto":
            check_source(self.embedder)
        if self.chunk_size and not 32 <= self.chunk_size <= 8192:
            raise ConfigError(f"chunk_size {self.chunk_size} is out of range; use 0 (auto) or 32..8192")
        if self.chunk_overlap != -1 and not 0 <= self.chunk_overlap < max(self.chunk_size, 32):
            raise ConfigError(
                f"chunk_overlap {self.chunk_overlap} must be -1 (auto) or between 0 and chunk_size"
            )
        if not 1 <= self.top_k <= 50:
            raise ConfigError(f"top_k {self.top_k} is out of range; use 1..50")
        if not 0 <= self.image_top_k <= 20:
            raise ConfigError(f"image_top_k {self.image_top_k} is out of range; use 0..20")
        for name in ("min_relevance", "image_match_min_score", "image_question_min_relevance"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} {getattr(self, name)} is out of range; use 0 (off/auto) up to below 1")
        if self.max_file_mb <= 0 or self.whole_document_max_chars <= 0:
            raise ConfigError("max_file_mb and whole_document_max_chars must be positive")
        for name in ("max_parse_seconds", "max_html_depth", "max_sections", "max_chunks", "max_docx_xml_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"knowledge.{name} must be positive, got {getattr(self, name)}")
        if not self.collection_prefix.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(
                f"collection_prefix {self.collection_prefix!r} may use only letters, digits, '_' and '-'"
            )

    def resolved_path(self) -> Path:
        if self.path:
            return Path(self.path).expanduser().resolve()
        return PROJECT_DIR / "knowledge" / ".store"


@dataclass(frozen=True)
class AdaptersConfig:
    enabled: bool = _help("load the LoRA adapters in the store and offer them in Chat and Compare", True)
    path: str = _help(
        "adapter store: one folder per adapter in peft format plus adapter_card.json "
        "(default: adapters/ in the project, which holds the shipped ones)", ""
    )
    user_path: str = _help(
        "where adapters a user uploads or trains are stored (default: <data_dir>/adapters); the "
        "shipped store (path) is read-only", ""
    )
    max_upload_mb: int = _help("largest adapter zip accepted for upload, MB", 200)
    max_rank: int = _help("highest LoRA rank an uploaded adapter may have", 256)

    def __post_init__(self) -> None:
        if not 1 <= self.max_upload_mb <= 10_000:
            raise ConfigError(f"adapters.max_upload_mb {self.max_upload_mb} is out of range; use 1..10000")
        if not 1 <= self.max_rank <= 256:
            raise ConfigError(f"adapters.max_rank {self.max_rank} is out of range; use 1..256")

    def resolved_path(self) -> Path:
        if self.path:
            return Path(self.path).expanduser().resolve()
        return PROJECT_DIR / "adapters"


@dataclass(frozen=True)
class FinetuneConfig:
    enabled: bool = _help("offer the Fine-tune tab (training runs in its own process)", True)
    max_rows: int = _help("most rows a dataset may have", 20_000)
    max_steps: int = _help("most optimizer steps one run may take (a cap for public demos)", 5_000)
    max_upload_mb: int = _help("largest dataset file (JSONL, JSON or zip) accepted, MB", 100)
    runs_path: str = _help("where training runs keep their folders (default: <data_dir>/runs)", "")
    threads: int = _help("CPU threads a training run uses (0: all cores but one, at least one)", 0)

    def __post_init__(self) -> None:
        if not 1 <= self.max_rows <= 10_000_000:
            raise ConfigError(f"finetune.max_rows {self.max_rows} is out of range; use 1..10000000")
        if not 1 <= self.max_steps <= 1_000_000:
            raise ConfigError(f"finetune.max_steps {self.max_steps} is out of range; use 1..1000000")
        if not 1 <= self.max_upload_mb <= 10_000:
            raise ConfigError(f"finetune.max_upload_mb {self.max_upload_mb} is out of range; use 1..10000")
        if not 0 <= self.threads <= 1024:
            raise ConfigError(f"finetune.threads {self.threads} is out of range; use 0 (auto) or 1..1024")


@dataclass(frozen=True)
class AppConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    limits: UploadLimits = field(default_factory=UploadLimits)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    server: ServerConfig = field(default_factory=ServerConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data_dir: str = _help("the app's own writable directory (uploads, exports)", "")

    def resolved_data_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser().resolve()
        import tempfile

        return Path(tempfile.gettempdir()) / "mmchat"

    def user_adapters_dir(self) -> Path:
        """Where uploaded and trained adapters go ([adapters] user_path, else <data_dir>/adapters)."""
        if self.adapters.user_path:
            return Path(self.adapters.user_path).expanduser().resolve()
        return self.resolved_data_dir() / "adapters"

    def runs_dir(self) -> Path:
        """Where training runs keep their folders ([finetune] runs_path, else <data_dir>/runs)."""
        if self.finetune.runs_path:
            return Path(self.finetune.runs_path).expanduser().resolve()
        return self.resolved_data_dir() / "runs"

    def cache_dir(self) -> Path:
        return Path(self.model.cache_dir).expanduser()


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "encoder": EncoderConfig,
    "limits": UploadLimits,
    "generation": GenerationDefaults,
    "server": ServerConfig,
    "knowledge": KnowledgeConfig,
    "adapters": AdaptersConfig,
    "finetune": FinetuneConfig,
}


def _build_section(cls: type, values: Mapping[str, Any], section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{section}]; valid keys: {', '.join(sorted(known))}"
        )
    coerced = {}
    for key, value in values.items():
        default = known[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, tuple) and isinstance(value, str):  # from the environment
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        elif isinstance(default, bool) and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            try:
                value = type(default)(value)
            except ValueError:
                raise ConfigError(f"[{section}] {key} = {value!r} is not a number") from None
        coerced[key] = value
    return cls(**coerced)


ENV_OVERRIDES = {
    "GRADIO_SERVER_NAME": ("server", "host"),
    "GRADIO_SERVER_PORT": ("server", "port"),
    "MMCHAT_ALLOWED_HOSTS": ("server", "allowed_hosts"),
    "MMCHAT_PRESET": ("model", "preset"),
    "MMCHAT_ENCODER": ("encoder", "kind"),
    "MMCHAT_DATA_DIR": ("", "data_dir"),
    "MMCHAT_KNOWLEDGE_PATH": ("knowledge", "path"),
    "MMCHAT_CHROMA_HOST": ("knowledge", "host"),
    "MMCHAT_CHROMA_PORT": ("knowledge", "port"),
    "MMCHAT_ADAPTERS_PATH": ("adapters", "path"),
    "MMCHAT_USER_ADAPTERS_PATH": ("adapters", "user_path"),
    "MMCHAT_ALLOWED_ORIGINS": ("server", "allowed_origins"),
    "MMCHAT_RUNS_PATH": ("finetune", "runs_path"),
}


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; `what` names it in the message when it is missing or not TOML."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid TOML: {err}") from None


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> AppConfig:
    """Build an `AppConfig` from a TOML file, the environment and explicit overrides.

    `overrides` is `{section: {key: value}}` (section `""` for top-level keys), as the CLI
    produces it; values of `None` are ignored so unset flags do not clobber the file.
    """
    env = os.environ if env is None else env
    path = path or env.get("MMCHAT_CONFIG") or None
    raw: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    if path:
        path = Path(path)
        data = read_toml(path, "config file")
        for key, value in data.items():
            if key in SECTIONS and isinstance(value, dict):
                raw[key] = dict(value)
            elif key == "data_dir":
                top[key] = value
            else:
                raise ConfigError(
                    f"unknown entry {key!r} in {str(path)!r}; sections: {', '.join(SECTIONS)}"
                    ", top-level keys: data_dir"
                )
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            (raw.setdefault(section, {}) if section else top)[key] = env[var]
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                (raw.setdefault(section, {}) if section else top)[key] = value
    sections = {name: _build_section(cls, raw.get(name, {}), name) for name, cls in SECTIONS.items()}
    return AppConfig(**sections, **top)


def with_overrides(config: AppConfig, **sections: Mapping[str, Any]) -> AppConfig:
    """A copy of `config` with some fields of some sections replaced (used by tests)."""
    changes = {name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    return dataclasses.replace(config, **changes)
