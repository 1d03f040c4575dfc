"""`python -m ckpt_exporter`, and the `ckpt-exporter` command (pyproject's console script)."""

from __future__ import annotations

import signal


def main() -> int:
    # SIGHUP's default action ends the process, and the reload handler is installed only once the
    # imports and start-up are done (about a second): until then a SIGHUP (a ConfigMap edit's
    # reloader, say) is ignored; the settings are being read at that moment anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from ckpt_exporter.cli import main as run

    return run()


if __name__ == "__main__":
    raise SystemExit(main())
