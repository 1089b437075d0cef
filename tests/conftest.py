# Every fixture module, as pytest plugins (psycopg's tests do the same): a test asks for a
# fixture by name and never imports it.
pytest_plugins = ["tests.fix_pg", "tests.fix_daemons", "tests.fix_faults", "tests.fix_browser"]
