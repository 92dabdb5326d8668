"""``python -m bundler`` and the ``airbundle`` command: the CLI, with Ctrl-C while Python is still
loading it (click, cryptography, docker-py take a moment) ending as Ctrl-C does later: a word and
exit 130, no traceback."""

import sys


def console() -> None:
    try:
        from bundler.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("airbundle: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    console()
