"""``python -m bundler`` runs the airbundle CLI."""

from bundler.cli import main

if __name__ == "__main__":
    main()
