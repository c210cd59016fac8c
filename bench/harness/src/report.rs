//! The terminal report: Markdown tables (comfy-table), so a run can be pasted into docs/performance.md.

use comfy_table::Table;
use comfy_table::presets::ASCII_MARKDOWN;

use crate::{Lane, Results, Shape};

fn table(header: Vec<&str>) -> Table {
    let mut t = Table::new();
    t.load_style(ASCII_MARKDOWN).set_header(header);
    t
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

pub fn render(r: &Results) -> String {
    let m = &r.machine;
    let mut out = format!(
        "Machine: {} cores, {}, {} RAM; PostgreSQL {}; {}; commit {}; {} (load average at start {})\n\
         Plan: {} preset, warm-up {} s, measured {} s, pool {}, {} gRPC connections, engine handler {:?}, node worker threads {}\n\n",
        m.nproc,
        m.cpu_model,
        m.mem_total,
        m.postgres,
        m.rustc,
        m.git_commit,
        m.date_utc,
        m.load_average_at_start,
        r.plan.preset,
        r.plan.warmup_secs,
        r.plan.measure_secs,
        r.plan.pool,
        r.plan.connections,
        r.plan.engine_handler,
        r.plan.node_worker_threads.map_or("one per core".to_string(), |n| n.to_string()),
    );

    if !r.pgbench.is_empty() || !r.echo.is_empty() {
        let mut t = table(vec![
            "baseline",
            "C",
            "payload",
            "ops/s",
            "p50 / avg ms",
            "p99 ms",
            "commits/op",
            "write tx/op",
            "WAL B/op",
        ]);
        for p in &r.pgbench {
            t.add_row(vec![
                "pgbench, 1 journal INSERT per commit".to_string(),
                p.clients.to_string(),
                format!("{} B", p.payload),
                format!("{:.0}", p.tps),
                format!("{:.3} (avg)", p.latency_ms),
                "".into(),
                format!("{:.2}", p.commits_per_tx),
                format!("{:.2}", p.write_tx_per_tx),
                format!("{:.0}", p.wal_bytes_per_tx),
            ]);
        }
        for e in &r.echo {
            t.add_row(vec![
                "tonic echo (health Check), separate process".to_string(),
                e.clients.to_string(),
                "".into(),
                format!("{:.0}", e.calls_per_sec),
                format!("{:.3}", e.p50_ms),
                format!("{:.3}", e.p99_ms),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        out += &format!("{t}\n");
        if let Some(f) = r.floor_ms {
            out += &format!(
                "Serial floor = 3 × echo p50 (c=1) + pgbench latency (c=1) = {f:.3} ms → {:.0} cmd/s\n",
                1000.0 / f
            );
        }
        out += "\n";
    }

    let mut t = table(vec![
        "lane",
        "shape",
        "C",
        "entities",
        "payload",
        "event B",
        "snap",
        "cmd/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "commits/cmd",
        "write tx/cmd",
        "WAL B/cmd",
        "CPU s node/handler/pg/gen",
        "CPU µs/cmd",
        "vs baseline",
    ]);
    for run in &r.runs {
        let s = &run.spec;
        let shape = match (s.shape, s.rate) {
            (Shape::Rate, Some(rate)) => format!("rate {rate:.0}/s"),
            (shape, _) => format!("{shape:?}").to_lowercase(),
        };
        let lane = match s.lane {
            Lane::Full => "full",
            Lane::Engine => "engine",
        };
        t.add_row(vec![
            lane.to_string(),
            shape,
            s.clients.to_string(),
            s.entities.to_string(),
            s.payload.to_string(),
            format!("{:.0}", run.event_bytes_avg),
            if s.snapshots == 0 { "off".into() } else { s.snapshots.to_string() },
            format!("{:.0}", run.commands_per_sec),
            format!("{:.2}", run.p50_ms),
            format!("{:.2}", run.p99_ms),
            format!("{:.2}", run.p999_ms),
            run.errors.to_string(),
            format!("{:.2}", run.commits_per_command),
            format!("{:.2}", run.write_tx_per_command),
            format!("{:.0}", run.wal_bytes_per_command),
            match s.lane {
                Lane::Full => format!(
                    "{:.1}/{:.1}/{:.1}/{:.1}",
                    run.cpu.node_s, run.cpu.handler_s, run.cpu.postgres_s, run.cpu.harness_s
                ),
                // The engine, its handler and the load generator are one process: all of it is under "gen".
                Lane::Engine => format!("–/–/{:.1}/{:.1}", run.cpu.postgres_s, run.cpu.harness_s),
            },
            format!("{:.0}", run.cpu_us_per_command),
            run.ratio.as_ref().map(|(label, _, x)| format!("{x:.2} × {label}")).unwrap_or_default(),
        ]);
    }
    out += &format!("{t}\n\n");

    if let Some(f) = &r.footprint {
        let mut t = table(vec!["node footprint", "value"]);
        t.add_row(vec![
            "start → SERVING, fresh schema (migrations)".to_string(),
            format!("{:.0} ms", f.ready_fresh_schema_ms),
        ]);
        t.add_row(vec![
            "start → SERVING, existing schema".to_string(),
            format!("{:.0} ms", f.ready_existing_schema_ms),
        ]);
        t.add_row(vec![
            "idle RSS (first start / restart)".to_string(),
            format!("{} / {}", mib(f.idle_rss_bytes as f64), mib(f.idle_rss_restart_bytes as f64)),
        ]);
        t.add_row(vec![format!("RSS with {} resident entities", f.entities), mib(f.rss_after_entities_bytes as f64)]);
        t.add_row(vec!["RSS per resident entity".to_string(), format!("{:.0} B", f.rss_per_entity_bytes)]);
        out += &format!("{t}\n\n");
    }

    if !r.targets.is_empty() {
        let mut t = table(vec!["target", "goal", "measured", "met"]);
        for x in &r.targets {
            let met = match x.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "?",
            };
            t.add_row(vec![x.name.clone(), x.goal.clone(), x.measured.clone(), met.to_string()]);
        }
        out += &format!("{t}\n");
    }
    out
}
