"""The server's entry command for deployments (the Dockerfile's CMD).

    python -m app.serve [streamlit options, e.g. --server.port 8501]

It claims the workspace (``$STEERBOARD_WORKSPACE``) for this process, then runs
``streamlit run app/main.py`` in the same process, which keeps the claim. ``streamlit run``
alone claims the workspace at the first page view; this claims it at start, so a replica
given a workspace that another server holds exits at once (status 3) with a message naming
that server, instead of serving pages that say so.
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.session.store import WorkspaceError, claim_workspace, resolve_workspace

ENTRY = Path(__file__).resolve().parent / "main.py"
EXIT_WORKSPACE_TAKEN = 3


def main(argv: list[str] | None = None) -> int:
    """Claim the workspace, then run the app's Streamlit server (returns only on refusal)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        claim_workspace(resolve_workspace())  # held until the process ends (see ServerClaim)
    except WorkspaceError as exc:
        print(f"steerboard: {exc}", file=sys.stderr)
        return EXIT_WORKSPACE_TAKEN
    from streamlit.web import cli  # after the claim: a refused replica exits without loading Streamlit

    cli.main(args=["run", str(ENTRY), *args], prog_name="streamlit")  # exits through SystemExit
    return 0


if __name__ == "__main__":
    sys.exit(main())
