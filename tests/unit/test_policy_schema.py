"""The shipped JSON Schema is generated from the loader's models, and they agree."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from sync.errors import PolicyError
from sync.policy.loader import load_policy, policy_json_schema

ROOT = Path(__file__).resolve().parents[2]

DOCS = [
    ("version: 1\nrules: {contact: {columns: [lastname]}}", True),
    ("rules:\n  contact:\n    - {columns: [lastname], to: [eu-*]}\n"
     "    - {columns: [lastname, firstname], to: [us-east]}\n", True),
    ("classification: {contact.medical_notes: [medical]}\nnever_leaves_region: [medical]\n", True),
    ("rules: {contact: {columns: lastname}}", False),             # not a list
    ("rules: {contact: {colums: [lastname]}}", False),            # unknown key
    ("rules: {contact: {}}", False),                              # columns missing
    ("rules: {Contact: {columns: [lastname]}}", False),           # table names are lowercase
    ("classification: {medical_notes: [medical]}", False),        # needs table.column
    ("version: '1'", False),                                      # strict: a number
    ("version: 2", False),
    ("rules: {contact: {columns: [lastname, lastname]}}", False), # duplicate column
    ("rules: {contact: {columns: [lastname], to: ['EU WEST']}}", False),
    ("owner: compliance", False),
]


def test_shipped_schema_is_generated_from_the_models() -> None:
    shipped = json.loads((ROOT / "policies" / "policy.schema.json").read_text())
    assert shipped == policy_json_schema(), "regenerate: regionsync policy schema > " \
                                            "policies/policy.schema.json"


@pytest.mark.parametrize(("text", "valid"), DOCS)
def test_schema_and_loader_agree(tmp_path: Path, text: str, valid: bool) -> None:
    doc = YAML(typ="safe").load(text)
    schema_ok = jsonschema.Draft202012Validator(policy_json_schema()).is_valid(doc)
    (tmp_path / "p.yaml").write_text(text)
    try:
        load_policy(tmp_path)
        loader_ok = True
    except PolicyError:
        loader_ok = False
    assert schema_ok == loader_ok == valid


def test_shipped_policy_validates_against_the_schema() -> None:
    doc = YAML(typ="safe").load((ROOT / "policies" / "regionsync.yaml").read_text())
    jsonschema.Draft202012Validator(policy_json_schema()).validate(doc)


def test_overlapping_rules_in_two_files_name_both(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  contact:\n    columns: [lastname]\n"
                                     "    to: [eu-*]\n")
    (tmp_path / "b.yaml").write_text("rules:\n  contact:\n    columns: [lastname]\n"
                                     "    to: [us-east]\n")
    pol = load_policy(tmp_path)                     # disjoint destinations: fine
    assert pol.rule_for("contact", "us-east").file.endswith("b.yaml")
    (tmp_path / "c.yaml").write_text("rules:\n  contact:\n    columns: [firstname]\n"
                                     "    to: [eu-north]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path)
    assert f"{tmp_path / 'a.yaml'}:2" in str(err.value)
    assert f"{tmp_path / 'c.yaml'}:2" in str(err.value)


def test_patterns_overlapping_only_on_a_known_region_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  contact:\n    - {columns: [lastname], to: [eu-*]}\n"
                                     "    - {columns: [firstname], to: ['*-north']}\n")
    assert load_policy(tmp_path).rule_for("contact", "eu-west") is not None
    with pytest.raises(PolicyError, match="two rules send table 'contact' to region 'eu-north'"):
        load_policy(tmp_path, regions=["eu-west", "eu-north"])
