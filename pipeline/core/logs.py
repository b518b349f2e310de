import logging
import sys

#: Libraries whose DEBUG lines carry request headers (credentials, session tokens).
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines on stderr (idempotent). The S3 and HTTP libraries never log below
    INFO, even when `level` is DEBUG: their debug output includes signed request headers."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    credentials = logging.getLogger("botocore.credentials")
    if not any(isinstance(f, OnceFilter) for f in credentials.filters):
        credentials.addFilter(OnceFilter())  # every S3 client says where its keys came from


class OnceFilter(logging.Filter):
    """Let each distinct message through once per process."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True
