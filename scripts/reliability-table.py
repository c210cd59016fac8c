#!/usr/bin/env python3
"""Renders the reliability scenario results into the Markdown table of docs/reliability.md.

Every history-checked reliability test writes one JSON file per run (tests/support/report.rs) into
$REGENT_RELIABILITY_DIR, default target/reliability. This script reads them and prints one table over all 23
scenarios of shared/spec/reliability.md section 4.5: the tests that ran each, what their clients saw (commands
acknowledged, indeterminate, failed attempts by gRPC code) and the checker's violations. Scenarios covered by tests
that record no result file (single-node tests) are listed from the table below; scenarios without either are marked
as pending.

    scripts/reliability-table.py                        # print the table (from target/reliability)
    scripts/reliability-table.py --dir DIR              # from another folder
    scripts/reliability-table.py --update docs/reliability.md
                                                        # replace the table between the markers in that file
    scripts/reliability-table.py --strict               # exit 1 if a result has violations or a scenario none

Standard library only (Python 3.8+).
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

BEGIN = "<!-- reliability-table:begin -->"
END = "<!-- reliability-table:end -->"

# shared/spec/reliability.md section 4.5, in short.
SCENARIOS = {
    "1": "`kill -9` 1 of 3 nodes under load",
    "2": "`kill -9` and restart the same node on the same address/port",
    "3": "`SIGSTOP` a node past its lease, then `SIGCONT`",
    "4": "partition 2│1",
    "5": "partition 2│2 (4 nodes)",
    "6": "indirect partition (A ✕ B, C sees both)",
    "7": "flapping link (cut/heal every 1–3 s)",
    "8": "`pg_ctl restart -m immediate` under load",
    "9": "PostgreSQL down 30 s",
    "10": "ambiguous commit (`pg_terminate_backend` between INSERT and COMMIT)",
    "11": "handler slower than the call timeout",
    "12": "handler returns a gRPC error with rich details",
    "13": "handler process killed / port closed",
    "14": "`HandleEvent` without `resulting_state`; unknown types with validation",
    "15": "malformed protobuf body",
    "16": "empty `entity_id`",
    "17": "payloads: 3.9 MiB ok, 4 MiB + 1 refused",
    "18": "slowloris / HTTP/2 abuse",
    "19": "client cancels (1 ms deadline) mid-command",
    "20": "hot entity: 64 clients, 1 entity",
    "21": "`kill -9` during read-side delivery",
    "22": "read-side gap: a transaction held open while later ones commit",
    "23": "rolling restart, scale 3→5→3, coordinator killed mid-rebalance",
}

# Tests that cover a scenario (or part of it) without writing a result file: (test, what it shows).
SINGLE = "single-node test, pass/fail (no result file)"
OTHER_TESTS = {
    "11": [("write_path.rs `handler_slower_than_calls_timeout_is_deadline_exceeded`", SINGLE),
           ("write_path.rs `ask_timeout_is_internal_and_the_command_may_still_complete`", SINGLE)],
    "12": [("write_path.rs `handler_error_is_relayed_with_code_message_details_and_trailer`", SINGLE),
           ("write_path.rs `event_handler_error_is_relayed_and_no_event_of_the_command_is_persisted`", SINGLE)],
    "13": [("write_path.rs `handler_down_is_unavailable_and_node_recovers_when_it_is_back`", SINGLE),
           ("write_path.rs `handler_on_a_closed_port_is_unavailable`", SINGLE)],
    "14": [("write_path.rs `event_handler_without_state_is_invalid_argument_and_persists_nothing`", SINGLE),
           ("write_path.rs `validation_rejects_unlisted_event_and_state_types`", SINGLE)],
    "15": [("bad_input.rs `malformed_protobuf_bodies_are_internal_and_the_node_keeps_serving`",
            SINGLE + "; truncated varint, wrong wire type, bad lengths: INTERNAL, the node serves on"),
           ("write_path.rs `garbage_commands_are_relayed_and_the_node_keeps_serving`",
            SINGLE + "; garbage inside `Any.value` is opaque and reaches the handler"),
           ("scripts/fuzz.sh (cargo-fuzz: request conversion, configuration, read-side YAML, peer envelope)",
            "bounded run in CI, no crash (one found and fixed: configuration integers beyond TOML's range)")],
    "16": [("write_path.rs `empty_entity_id_is_invalid_argument_for_both_rpcs`", SINGLE),
           ("write_path.rs `odd_entity_ids_never_break_the_node`", SINGLE)],
    "17": [("bad_input.rs `messages_up_to_the_limit_pass_and_larger_ones_are_refused_in_both_directions`",
            SINGLE + "; 3.9 MiB end to end; 4 MiB + 1 OUT_OF_RANGE; a handler reply above the limit is an error, "
            "journal unchanged"),
           ("bad_input.rs `a_forward_too_large_for_the_node_link_is_a_status_not_a_hang`",
            "2 node processes: a command above the node link's frame limit is OUT_OF_RANGE at once, the link stays up")],
    "18": [("bad_input.rs `http2_abuse_leaves_other_clients_served_and_memory_bounded`",
            SINGLE + "; 1,000 idle connections, preface-only, unanswered PINGs, unfinished streams past the stream "
            "limit, HEADERS+RST_STREAM flood: a well-behaved client served throughout, RSS bounded, abusers closed")],
    "20": [("write_path.rs `concurrent_commands_to_one_entity_get_gapless_revisions`",
            SINGLE + "; 64 concurrent commands on one entity: strictly serial, gapless revisions, no conflict"),
           ("write_path.rs `a_full_entity_queue_answers_resource_exhausted_and_loses_nothing`",
            SINGLE + "; beyond `REGENT_ENTITY_QUEUE_LIMIT` waiting requests: RESOURCE_EXHAUSTED at once, nothing "
            "refused stored, nothing acknowledged lost, the entity serves on")],
    "21": [("read_sides.rs `sigkill_mid_delivery_resumes_from_the_stored_offset`", SINGLE),
           ("I4 of every cluster test with the read-side sink",
            "SIGKILL / SIGSTOP / partitions / restarts during delivery: see the rows of #1–#7, #23")],
    "23": [("deploy_compose.rs `compose_cluster_survives_crash_partition_scaling_and_rolling_restart`",
            "containers (Docker Compose, 3 nodes + PostgreSQL + handler) under load: `docker kill`, network cut, "
            "scale 3→5→3, rolling restart of every node; every acknowledged command checked in the journal "
            "(figures in deployment.md)")],
}

# Scenarios another branch delivers; shown as placeholders until their result files exist.
PENDING = {}



def load(folder):
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        result.setdefault("test", path.stem)
        results.append(result)
    return results


def failed_attempts(result):
    codes = result.get("failed_attempts") or {}
    total = sum(codes.values())
    if not total:
        return "0"
    parts = ", ".join(f"{n} {code}" for code, n in sorted(codes.items(), key=lambda kv: -kv[1]))
    return f"{total} ({parts})"


DURATION = re.compile(r"(\d+\.\d)\d+(ms|µs|s)\b")


def cell(text):
    """A table cell: pipes escaped, one line, durations (Rust's `{:?}`) to one decimal."""
    text = DURATION.sub(r"\1\2", str(text))
    return text.replace("|", "\\|").replace("\n", " ")


def scenario_key(number):
    return (0, int(number)) if number.isdigit() else (1, number)


def render(results):
    by_scenario = {}
    for result in results:
        by_scenario.setdefault(str(result.get("scenario", "?")), []).append(result)
    lines = [
        "| # | Scenario | Test | Commands: acked / indeterminate | Failed attempts (retried or given up) "
        "| Violations | Notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, title in SCENARIOS.items():
        runs = sorted(by_scenario.get(number, []), key=lambda r: r["test"])
        for run in runs:
            lines.append(
                f"| {number} | {cell(title)} | `{cell(run['test'])}` "
                f"| {run.get('acknowledged', 0)} / {run.get('indeterminate', 0)} "
                f"| {cell(failed_attempts(run))} | {run.get('violations', '?')} "
                f"| {cell('; '.join(run.get('notes') or []))} |"
            )
        for test, what in OTHER_TESTS.get(number, []):
            lines.append(f"| {number} | {cell(title)} | {cell(test)} | – | – | – | {cell(what)} |")
        if not runs and number in PENDING:
            lines.append(f"| {number} | {cell(title)} | *pending: {cell(PENDING[number])}* | | | | |")
        elif not runs and number not in OTHER_TESTS:
            lines.append(f"| {number} | {cell(title)} | *no test yet* | | | | |")
    extra = [n for n in sorted(by_scenario, key=scenario_key) if n not in SCENARIOS]
    if extra:
        lines += ["", "Other history-checked cluster tests:", "",
                  "| Tag | Test | Commands: acked / indeterminate | Failed attempts | Violations |",
                  "|---|---|---|---|---|"]
        for number in extra:
            for run in sorted(by_scenario[number], key=lambda r: r["test"]):
                lines.append(
                    f"| {cell(number)} | `{cell(run['test'])}` | {run.get('acknowledged', 0)} / "
                    f"{run.get('indeterminate', 0)} | {cell(failed_attempts(run))} | {run.get('violations', '?')} |"
                )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("REGENT_RELIABILITY_DIR", "target/reliability")
    parser.add_argument("--dir", default=default, help=f"folder of result files (default {default})")
    parser.add_argument("--update", metavar="FILE", help="replace the table between the markers in FILE")
    parser.add_argument("--strict", action="store_true", help="exit 1 on a violation or a scenario without a test")
    args = parser.parse_args()

    results = load(args.dir)
    if not results:
        print(f"no result files in {args.dir}: run the reliability tests first", file=sys.stderr)
        return 1
    table = render(results)
    if args.update:
        path = Path(args.update)
        text = path.read_text()
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            print(f"{path} has no {BEGIN} … {END} markers", file=sys.stderr)
            return 1
        path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}{END}", text))
    else:
        sys.stdout.write(table)
    if args.strict:
        bad = [r["test"] for r in results if r.get("violations")]
        covered = {str(r.get("scenario")) for r in results} | set(OTHER_TESTS)
        missing = [n for n in SCENARIOS if n not in covered]
        if bad or missing:
            print(f"violations in {bad}; scenarios without a test: {missing}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
