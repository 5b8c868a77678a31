"""`python -m pipeline COMMAND`: the whole pipeline from one entry point.

    demo       every stage on a corpus that ships with Python, tiny model, a few CPU minutes
    run        the stages of a real config in order, skipping what is complete
    status     where a run stands: shards, checkpoints, tokens seen, val loss, HellaSwag
    generate   sample text from a checkpoint or from OpenAI's GPT-2 weights

`python -m pipeline COMMAND --help` for the options of each.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": "pipeline.commands.demo",
    "run": "pipeline.commands.run",
    "status": "pipeline.commands.status",
    "generate": "pipeline.commands.generate",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        if not argv:
            print(f"error: no command given (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    # Imported on demand, so each command loads only what it uses.
    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
