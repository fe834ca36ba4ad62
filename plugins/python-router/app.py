"""python-router: pgbouncer-rr's routing table as a pgvane policy plugin, in Python.

The config is the one regex-router (the Rust plugin) takes:

    {"rules": [{"usernameRegex": "...", "queryRegex": "...", "dbkey": "..."}, ...],
     "default": "dbkey or null"}

For each statement the first rule whose `usernameRegex` matches the user and whose
`queryRegex` matches the SQL routes it to the `[databases]` entry `dbkey`; when no rule
matches the statement goes to `default`, or passes when there is none. Patterns are Python
`re` patterns, unanchored (`re.search`), as in pgbouncer-rr itself. See README.md.

Built with componentize-py against ../../wit (world `policy`): `WitWorld` below is the
component's export; `wit_world.imports` are the bindings componentize-py generates.
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Context,
    Route_Database,
    Verdict,
    Verdict_Pass,
    Verdict_Route,
)

RULE_KEYS = {"usernameRegex", "queryRegex", "dbkey"}
TOP_KEYS = {"rules", "route", "default"}


class ConfigError(Exception):
    """A config the plugin refuses; the message names the key."""


def _pattern(rule: dict, key: str, where: str):
    """The compiled `rule[key]`, or None when it is absent (any value matches)."""
    value = rule.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    try:
        return re.compile(value)
    except re.error as e:
        raise ConfigError(f"{where}.{key}: bad regular expression: {e}") from None


def parse_config(text: str, databases: list[str]):
    """The checked routing table: ([(user_re, query_re, dbkey)], default)."""
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError("config: expected a table")
    unknown = sorted(set(config) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown field, expected one of rules, route, default")
    if "rules" in config and "route" in config:
        raise ConfigError("route: `rules` and its alias `route` are both set")
    key = "route" if "route" in config else "rules"
    rules = config.get(key, [])
    if not isinstance(rules, list):
        raise ConfigError(f"{key}: expected an array of rules")
    known = set(databases)
    table = []
    for i, rule in enumerate(rules):
        where = f"{key}[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = sorted(set(rule) - RULE_KEYS)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown field, expected one of usernameRegex, queryRegex, dbkey")
        dbkey = rule.get("dbkey")
        if not isinstance(dbkey, str):
            raise ConfigError(f"{where}.dbkey: missing, or not a string")
        if dbkey not in known:
            raise ConfigError(f"{where}.dbkey: `{dbkey}` is not a [databases] entry")
        table.append((_pattern(rule, "usernameRegex", where), _pattern(rule, "queryRegex", where), dbkey))
    default = config.get("default")
    if default is not None:
        if not isinstance(default, str):
            raise ConfigError("default: expected a string or null")
        if default not in known:
            raise ConfigError(f"default: `{default}` is not a [databases] entry")
    return table, default


# The table `init` loaded: one per instance (each instance is its own Python interpreter).
TABLE: list = []
DEFAULT = None


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        global TABLE, DEFAULT
        try:
            TABLE, DEFAULT = parse_config(config, host.databases())
        except ConfigError as e:
            # result<_, string>: the error case is raised as componentize_py_types.Err.
            raise Err(str(e))
        host.log(host.Level.INFO, "routing table loaded", [("rules", str(len(TABLE))), ("default", DEFAULT or "-")])

    def decide(self, ctx: Context) -> Verdict:
        for user_re, query_re, dbkey in TABLE:
            if (user_re is None or user_re.search(ctx.user)) and (query_re is None or query_re.search(ctx.sql)):
                return Verdict_Route(Route_Database(dbkey))
        if DEFAULT is not None:
            return Verdict_Route(Route_Database(DEFAULT))
        return Verdict_Pass()
