"""Health check for containers (the Dockerfile's HEALTHCHECK): exit 0 when the local server
answers Streamlit's health endpoint with ``ok``, else 1 with one line saying why.

    python -m app.health            # port from $STREAMLIT_SERVER_PORT, else 8501
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(port: int, timeout: float = 4.0) -> str | None:
    """None when ``http://127.0.0.1:<port>/_stcore/health`` says ok, else why not."""
    url = f"http://127.0.0.1:{port}/_stcore/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = reply.read(100)
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if body.strip() == b"ok" else f"{url} answered {body[:40]!r}"


def main() -> int:
    why = check(int(os.environ.get("STREAMLIT_SERVER_PORT") or 8501))
    if why:
        print(f"unhealthy: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
