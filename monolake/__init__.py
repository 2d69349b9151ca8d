"""monolake: the import namespace over the repository's top-level folders.

Each subpackage here is a relative symlink (``monolake/conf -> ../conf``, and so on) so that
``monolake.conf.schema`` is a real path on disk: mypy, pyright and an IDE's go-to-definition
resolve it with no import hook, and the build installs the same tree. See docs/contributing.md.
"""
