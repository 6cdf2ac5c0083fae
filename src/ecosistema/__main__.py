"""``python -m ecosistema``: the ``ecosistema`` command."""

from ecosistema.cli import main

if __name__ == "__main__":
    main()
