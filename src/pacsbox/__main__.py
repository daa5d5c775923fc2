"""``python -m pacsbox`` runs the ``pacsbox`` command line."""

from pacsbox.cli import main

if __name__ == "__main__":
    main()
