// js-rewrite: regex match/replace rules that rewrite SQL on its way to the server
// (pgbouncer-rr's `rewrite_query`), as a pgvane policy plugin in JavaScript.
//
// The config is the one query-rewrite (the Rust plugin) takes, plus an optional route:
//
//   {"rules": [{"queryRegex": "...", "replace": "...", "usernameRegex": "...", "dbkey": "..."}]}
//
// The first rule whose `usernameRegex` (if any) matches the user and whose `queryRegex` matches
// the SQL rewrites it: every match is replaced by `replace`, where `$1`, `${1}`, `${name}` insert
// capture groups and `$$` is a literal `$` (query-rewrite's syntax). With `dbkey`, the rewritten
// statement also runs on that `[databases]` entry. Unmatched statements pass. See README.md.
//
// Built with `jco componentize` (ComponentizeJS) against ../../wit, world `policy`: the exports
// below are the world's `init` and `decide`; `pgvane:policy/host@0.1.0` is the host import.

import { log, databases } from "pgvane:policy/host@0.1.0";

const RULE_KEYS = new Set(["queryRegex", "match", "replace", "usernameRegex", "dbkey"]);

// The rules `init` loaded: one set per instance.
let rules = [];

// A pattern in the plugins' shared syntax: a leading `(?i)` (which JavaScript's RegExp has no
// syntax for) becomes the `i` flag; the rest is JavaScript RegExp syntax. Unanchored, like
// Python's `re.search`.
function compile(source, where) {
  if (typeof source !== "string") {
    throw `${where}: expected a string, got ${source === null ? "null" : typeof source}`;
  }
  let flags = "g";
  let body = source;
  if (body.startsWith("(?i)")) {
    flags += "i";
    body = body.slice(4);
  }
  try {
    return new RegExp(body, flags);
  } catch (e) {
    throw `${where}: bad regular expression: ${e.message}`;
  }
}

// `replace` in query-rewrite's (the Rust regex crate's) syntax, as a function for
// String.prototype.replace: `$$` is `$`, `$name`/`${name}` a capture group by number or name
// (the empty string when there is no such group), anything else is literal.
function replacer(template) {
  const parts = [];
  const re = /\$(?:\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))/g;
  let last = 0;
  for (const m of template.matchAll(re)) {
    parts.push(template.slice(last, m.index));
    parts.push(m[0] === "$$" ? "$" : { group: m[1] ?? m[2] });
    last = m.index + m[0].length;
  }
  parts.push(template.slice(last));
  return (...args) => {
    const named = typeof args[args.length - 1] === "object" ? args[args.length - 1] : undefined;
    const numbered = args.slice(0, named === undefined ? -2 : -3);
    return parts
      .map((p) => {
        if (typeof p === "string") return p;
        const value = /^[0-9]+$/.test(p.group) ? numbered[Number(p.group)] : named?.[p.group];
        return value ?? "";
      })
      .join("");
  };
}

function parseConfig(text, known) {
  let config;
  try {
    config = JSON.parse(text);
  } catch (e) {
    throw `config is not JSON: ${e.message}`;
  }
  if (config === null || typeof config !== "object" || Array.isArray(config)) throw "config: expected a table";
  for (const key of Object.keys(config)) {
    if (key !== "rules") throw `${key}: unknown field, expected rules`;
  }
  const list = config.rules ?? [];
  if (!Array.isArray(list)) throw "rules: expected an array of rules";
  return list.map((rule, i) => {
    const where = `rules[${i}]`;
    if (rule === null || typeof rule !== "object" || Array.isArray(rule)) throw `${where}: expected a table`;
    for (const key of Object.keys(rule)) {
      if (!RULE_KEYS.has(key)) {
        throw `${where}.${key}: unknown field, expected one of queryRegex, replace, usernameRegex, dbkey`;
      }
    }
    const queryKey = "queryRegex" in rule ? "queryRegex" : "match";
    if (!(queryKey in rule)) throw `${where}: missing field \`queryRegex\``;
    if (typeof rule.replace !== "string") throw `${where}.replace: missing, or not a string`;
    if (rule.dbkey !== undefined && !known.includes(rule.dbkey)) {
      throw `${where}.dbkey: \`${rule.dbkey}\` is not a [databases] entry`;
    }
    return {
      query: compile(rule[queryKey], `${where}.${queryKey}`),
      user: rule.usernameRegex === undefined ? null : compile(rule.usernameRegex, `${where}.usernameRegex`),
      replace: replacer(rule.replace),
      dbkey: rule.dbkey,
    };
  });
}

// `init: func(config: string) -> result<_, string>`: returning is `ok`, throwing a string is
// `err` with that string.
export function init(config) {
  rules = parseConfig(config, databases());
  log("info", "rewrite rules loaded", [["rules", String(rules.length)]]);
}

// A global RegExp is stateful (`lastIndex`): `test` must start from 0 every time.
function matches(re, text) {
  re.lastIndex = 0;
  return re.test(text);
}

// `decide: func(ctx: context) -> verdict`: a variant is `{ tag, val }`.
export function decide(ctx) {
  const rule = rules.find((r) => (r.user === null || matches(r.user, ctx.user)) && matches(r.query, ctx.sql));
  if (rule === undefined) return { tag: "pass" };
  const sql = ctx.sql.replace(rule.query, rule.replace);
  if (rule.dbkey !== undefined) {
    return { tag: "route-and-rewrite", val: { route: { tag: "database", val: rule.dbkey }, sql } };
  }
  return sql === ctx.sql ? { tag: "pass" } : { tag: "rewrite", val: sql };
}
