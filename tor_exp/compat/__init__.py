"""Every patch of a dependency's internals lives here, one module per dependency (issue 30, item 5).

Each patch names the dependency version it was written against and has a test (``tests/compat/``) that fails
loudly when the patched symbol disappears, so an upgrade breaks a named test instead of a result.
"""
