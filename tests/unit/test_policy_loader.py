"""Policy files: fail closed, and every refusal names file, line, key and column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sync.db.catalog import Schema, TableInfo
from sync.errors import PolicyError
from sync.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / "policies"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


def schema() -> Schema:
    cols = ("contactid", "accountid", "firstname", "lastname", "medical_notes",
            "implant_serial", "createdon", "modifiedon", "versionnumber", "sync_origin")
    return Schema({"contact": TableInfo("contact", "contactid", cols, {})})


def test_shipped_policy_loads_and_keeps_medical_home() -> None:
    pol = load_policy(ROOT / "policies")
    assert "medicalcase" not in pol.rules
    for region in ("eu-north", "us-east"):
        assert "medical_notes" not in pol.rules_to(region)["contact"].columns


def test_medical_column_on_allow_list_is_refused_with_file_line_key(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", """\
classification:
  contact.medical_notes: [medical]
never_leaves_region: [medical]
rules:
  contact:
    columns:
      - lastname
      - medical_notes
""")
    with pytest.raises(PolicyError) as err:
        load_policy(d)
    msg = str(err.value)
    assert msg.startswith(f"{d / 'p.yaml'}:8: rules.contact.columns[1]: ")
    assert "contact.medical_notes" in msg and "never leaves" in msg


def test_whole_table_classified_medical_cannot_have_a_rule(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "classification: {contact.*: [medical]}\n"
                                  "never_leaves_region: [medical]\n"
                                  "rules:\n  contact:\n    columns: [lastname]\n")
    with pytest.raises(PolicyError, match=r"p.yaml:4: rules.contact: table 'contact'"):
        load_policy(d)


def test_misspelled_column_is_refused_against_the_schema(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "rules:\n  contact:\n    columns: [lastname, frstname]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(d, schema())
    assert str(err.value) == (f"{d / 'p.yaml'}:3: rules.contact.columns[1]: "
                              "column contact.frstname does not exist")


def test_unknown_table_is_refused(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "rules:\n  contcat:\n    columns: [lastname]\n")
    with pytest.raises(PolicyError, match=r"p.yaml:2: rules.contcat: unknown table 'contcat'"):
        load_policy(d, schema())


def test_versionnumber_never_travels(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "rules:\n  contact:\n    columns: [versionnumber]\n")
    with pytest.raises(PolicyError, match="assigned by each region"):
        load_policy(d, schema())


@pytest.mark.parametrize(("text", "line", "expect"), [
    ("rules:\n  contact:\n    columns: [a, b\n", 4, "not valid YAML"),
    ("rules:\n  contact:\n    columns: lastname\n", 3, "rules.contact.columns: Input should "
                                                          "be a valid list"),
    ("rules:\n  contact:\n    colums: [lastname]\n", 3, "rules.contact.colums: unknown key"),
    ("version: 2\n", 1, "version: Input should be less than or equal to 1"),
    ("rules:\n  contact:\n    columns: [lastname]\n    rows: \"lastname = lower('x')\"\n", 4,
     "rules.contact.rows: only literals"),
])
def test_malformed_files_give_one_clear_message(tmp_path: Path, text: str, line: int,
                                                expect: str) -> None:
    d = write(tmp_path, "p.yaml", text)
    with pytest.raises(PolicyError) as err:
        load_policy(d)
    assert str(err.value).startswith(f"{d / 'p.yaml'}:{line}: "), str(err.value)
    assert expect in str(err.value)


def test_two_files_ruling_one_table_name_both(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "rules:\n  contact:\n    columns: [lastname]\n")
    d = write(tmp_path, "b.yaml", "# second\nrules:\n  contact:\n    columns: [firstname]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(d)
    assert f"{d / 'a.yaml'}:2" in str(err.value) and f"{d / 'b.yaml'}:3" in str(err.value)


def test_filter_may_only_read_allowed_columns(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "rules:\n  contact:\n    columns: [lastname]\n"
                                  "    rows: \"medical_notes is null\"\n")
    with pytest.raises(PolicyError, match="not on the allow-list"):
        load_policy(d)


def test_empty_directory_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="no policy files"):
        load_policy(tmp_path / "empty")


def test_destinations_and_unclassified(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "classification: {contact.medical_notes: [medical]}\n"
                                  "rules:\n  contact:\n    columns: [lastname]\n"
                                  "    to: [eu-*]\n")
    pol = load_policy(d, schema())
    assert set(pol.rules_to("eu-north")) == {"contact"}
    assert pol.rules_to("us-east") == {}
    assert pol.unclassified(schema()) == ["contact.accountid", "contact.firstname",
                                          "contact.implant_serial"]


def typed_schema() -> Schema:
    cols = ("contactid", "lastname", "statecode", "revenue", "birthdate", "accountid",
            "createdon", "modifiedon", "versionnumber", "sync_origin")
    types = {"contactid": "uuid", "lastname": "text", "statecode": "integer",
             "revenue": "numeric(19,4)", "birthdate": "date", "accountid": "uuid",
             "createdon": "timestamp with time zone",
             "modifiedon": "timestamp with time zone", "versionnumber": "bigint",
             "sync_origin": "text"}
    return Schema({"contact": TableInfo("contact", "contactid", cols, types)})


@pytest.mark.parametrize(("rows", "says"), [
    ("lastname = '\\0'", "NUL byte"),
    ("statecode = 99999999999", "does not fit column statecode (integer)"),
    ("revenue > 1000000000000000", "does not fit column revenue (numeric(19,4))"),
    ("birthdate > '2026-13-45'", "is not a date (write YYYY-MM-DD)"),
    ("accountid = 'not-a-uuid'", "is not a UUID"),
])
def test_a_literal_postgresql_would_refuse_is_refused_at_load(tmp_path: Path, rows: str,
                                                              says: str) -> None:
    d = write(tmp_path, "p.yaml", f"""\
rules:
  contact:
    columns: [lastname, statecode, revenue, birthdate, accountid]
    rows: "{rows}"
""")
    with pytest.raises(PolicyError) as err:
        load_policy(d, typed_schema())
    assert says in str(err.value)
    assert f"{d / 'p.yaml'}:4: rules.contact.rows" in str(err.value)


def test_literals_postgresql_accepts_load(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", """\
rules:
  contact:
    columns: [lastname, statecode, revenue, birthdate]
    rows: "statecode = 2147483647 and revenue < 100.5 and birthdate >= '1990-01-31'"
""")
    assert load_policy(d, typed_schema()).rules["contact"][0].rows is not None


def test_column_groups_are_loaded_onto_their_rules(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "rules:\n  contact:\n    columns: [firstname, lastname]\n"
                                  "column_groups:\n  contact: [[firstname, lastname]]\n")
    pol = load_policy(d, schema())
    assert pol.column_groups == {"contact": (("firstname", "lastname"),)}
    assert pol.rules_to("eu-north")["contact"].groups == (("firstname", "lastname"),)


def test_half_a_column_group_on_an_allow_list_is_refused(tmp_path: Path) -> None:
    d = write(tmp_path, "p.yaml", "rules:\n  contact:\n    columns: [firstname]\n"
                                  "column_groups:\n  contact: [[firstname, lastname]]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(d)
    assert str(err.value) == (
        f"{d / 'p.yaml'}:3: rules.contact.columns: rule for contact sends firstname but not "
        "lastname of column group [firstname, lastname]; a group leaves whole or not at all")


@pytest.mark.parametrize("groups, message", [
    ("[[firstname, lastname], [lastname, accountid]]",
     "p.yaml:5: column_groups.contact[1]: column contact.lastname is in two column groups"),
    ("[[firstname, firstname]]", "p.yaml:5: column_groups.contact[0]: column group contact"),
])
def test_overlapping_or_trivial_column_groups_are_refused(tmp_path: Path, groups: str,
                                                         message: str) -> None:
    d = write(tmp_path, "p.yaml", "rules:\n  contact:\n    columns: [firstname]\n"
                                  f"column_groups:\n  contact: {groups}\n")
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(d)


def test_a_column_group_naming_a_system_or_unknown_column_is_refused(tmp_path: Path) -> None:
    for bad in ("modifiedon", "nosuch"):
        d = write(tmp_path, "p.yaml", "rules:\n  contact:\n    columns: [firstname]\n"
                                      f"column_groups:\n  contact: [[lastname, {bad}]]\n")
        with pytest.raises(PolicyError, match=f"names contact.{bad}, which is not a data"):
            load_policy(d, schema())


def keyed_schema() -> Schema:
    from sync.db.catalog import AlternateKey
    cols = ("contactid", "firstname", "lastname", "emailaddress1", "createdon", "modifiedon",
            "versionnumber", "sync_origin")
    return Schema({"contact": TableInfo("contact", "contactid", cols, {}, alternate_keys=(
        AlternateKey("contact_emailaddress1_key", ("emailaddress1",)),))})


def test_a_declared_alternate_key_needs_a_unique_index(tmp_path: Path) -> None:
    base = "rules:\n  contact:\n    columns: [firstname, emailaddress1]\n"
    ok = write(tmp_path, "p.yaml", base + "alternate_keys:\n  contact: [[emailaddress1]]\n")
    assert load_policy(ok, keyed_schema()).alternate_keys == {"contact": (("emailaddress1",),)}
    bad = write(tmp_path, "p.yaml", base + "alternate_keys:\n  contact: [[lastname]]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(bad, keyed_schema())
    assert str(err.value) == (
        f"{bad / 'p.yaml'}: alternate_keys.contact: alternate key contact: [lastname] has no "
        "unique index in the database, so one region could hold it twice; create one "
        "(CREATE UNIQUE INDEX ON public.contact (lastname)) or remove the declaration")
    unknown = write(tmp_path, "p.yaml", base + "alternate_keys:\n  contact: [[nosuch]]\n")
    with pytest.raises(PolicyError, match=re.escape("names unknown column contact.nosuch")):
        load_policy(unknown, keyed_schema())
    twice = write(tmp_path, "p.yaml", base + "alternate_keys:\n  contact: [[lastname, lastname]]\n")
    with pytest.raises(PolicyError, match=re.escape("p.yaml:5: alternate_keys.contact[0]")):
        load_policy(twice)
