"""The pure core: rules without sockets, threads, clocks, files or environment variables.

Identity, the sidecar schema, segments, resume, retry and HTTP wire rules. Time and
randomness are parameters; the I/O layers above call these and do the sending, sleeping
and writing. ``lint-imports`` (pyproject.toml) keeps it that way.
"""
