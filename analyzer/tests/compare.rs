//! `uffdscope compare`'s model, view and renderers on synthetic runs with
//! known differences, and on a run compared with itself.

use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_analyzer::compare::view::can_change_most;
use uffdscope_analyzer::compare::{compare, Comparison, Run};
use uffdscope_analyzer::render::compare::{render_markdown, render_text};
use uffdscope_analyzer::report::Report;
use uffdscope_fixtures::synth::Scenario;
use uffdscope_trace::TraceReader;

fn report_of(scenario: &Scenario, path: &str) -> Report {
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let bytes = uffdscope_trace::write_all(&scenario.meta(), &records);
    let reader = TraceReader::new(&bytes[..]).expect("synthetic trace opens");
    analyze(reader, path, &Options::default())
}

/// The baseline (the committed scenario) and a run with half as many faults
/// again and 3 kernel drops.
fn pair() -> (Report, Report) {
    let base = report_of(&Scenario::default(), "base.trace");
    let more = Scenario {
        faults: 300,
        drops: 3,
        ..Scenario::default()
    };
    (base, report_of(&more, "more.trace"))
}

fn comparison(reports: &[(&str, &Report)]) -> Comparison {
    let runs: Vec<Run<'_>> = reports
        .iter()
        .map(|(label, report)| Run {
            label: (*label).to_owned(),
            report,
        })
        .collect();
    compare(&runs)
}

fn figure<'a>(c: &'a Comparison, id: &str) -> &'a uffdscope_analyzer::compare::Figure {
    c.figures
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no figure {id}"))
}

#[test]
fn known_differences_show_as_ratios_deltas_and_findings() {
    let (a, b) = pair();
    let c = comparison(&[("A-run", &a), ("B-run", &b)]);
    let faults = figure(&c, "faults.count");
    assert_eq!(faults.values, vec![Some(400.0), Some(600.0)]);
    assert_eq!(faults.ratio, vec![Some(1.0), Some(1.5)]);
    assert_eq!(faults.delta, vec![Some(0.0), Some(200.0)]);
    let change = &c.changes[0];
    assert_eq!(
        (change.label.as_str(), change.against.as_str()),
        ("B-run", "A-run")
    );
    assert_eq!(change.findings_new, vec!["drops"]);
    assert!(change.findings_gone.is_empty());
    assert!(
        change.sentence.contains("New findings: drops."),
        "{}",
        change.sentence
    );
    let most = change.figure.as_deref().expect("a time figure changed");
    let f = figure(&c, most);
    let r = f.ratio[1].expect("measured");
    assert!((r - 1.0).abs() > 0.05, "{most} ×{r}");
    for g in c.figures.iter().filter(|g| can_change_most(g, 1)) {
        if let Some(other) = g.ratio[1] {
            assert!(
                other.ln().abs() <= r.ln().abs() + 1e-12,
                "{} changed more than {most}",
                g.id
            );
        }
    }
    assert!(change.sentence.contains(&f.name), "{}", change.sentence);
    let drops = c
        .findings
        .iter()
        .find(|row| row.rule == "drops")
        .expect("drops row");
    assert_eq!(drops.severity[0], None);
    assert!(drops.severity[1].is_some());
    assert!(c.runs[1].warnings.iter().any(|w| w.contains("dropped 3")));
}

/// Every figure with a report JSON path is that report's figure: compare
/// derives nothing the report has.
fn assert_figures_are_the_reports_own(a: &Report, b: &Report) {
    let c = comparison(&[("a", a), ("b", b)]);
    let json = [
        serde_json::to_value(a).unwrap(),
        serde_json::to_value(b).unwrap(),
    ];
    let mut checked = 0;
    for f in &c.figures {
        let pointer = format!("/{}", f.id.replace('.', "/"));
        for (run, report) in json.iter().enumerate() {
            let Some(v) = report.pointer(&pointer) else {
                continue;
            };
            assert_eq!(v.as_f64(), f.values[run], "{} of run {run}", f.id);
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} figures found in the reports");
}

#[test]
fn figures_are_the_reports_own() {
    let (a, b) = pair();
    assert_figures_are_the_reports_own(&a, &b);
}

/// The committed real trace takes the network stage apart; the synthetic one
/// cannot: its parts are unmeasured, and so are their ratios and deltas.
#[test]
fn a_figure_one_run_did_not_measure_has_no_ratio() {
    const REAL: &str = "fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REAL);
    let reader = TraceReader::open(&path).expect("committed real trace opens");
    let real = analyze(reader, REAL, &Options::default());
    let synth = report_of(&Scenario::default(), "synth.trace");
    assert_figures_are_the_reports_own(&real, &synth);
    let c = comparison(&[("real", &real), ("synth", &synth)]);
    let wire = figure(&c, "faults.network_split_us.wire.p50");
    assert!(wire.values[0].is_some());
    assert_eq!(
        (wire.values[1], wire.ratio[1], wire.delta[1]),
        (None, None, None)
    );
    assert!(render_text(&c).contains("network wire p50"));
    let reverse = comparison(&[("synth", &synth), ("real", &real)]);
    let wire = figure(&reverse, "faults.network_split_us.wire.p50");
    assert_eq!(
        (wire.ratio[1], wire.delta[1]),
        (None, None),
        "no baseline, no ratio"
    );
}

#[test]
fn a_run_compared_with_itself_changed_nothing() {
    let a = report_of(&Scenario::default(), "same.trace");
    let c = comparison(&[("first", &a), ("again", &a)]);
    for f in &c.figures {
        assert_eq!(f.values[0], f.values[1], "{}", f.id);
        let expect_ratio = f.values[0].filter(|v| *v != 0.0).map(|_| 1.0);
        assert_eq!(f.ratio[1], expect_ratio, "{}", f.id);
        assert_eq!(f.delta[1], f.values[0].map(|_| 0.0), "{}", f.id);
    }
    let change = &c.changes[0];
    assert_eq!(change.figure, None);
    assert!(
        change.sentence.contains("nothing changed"),
        "{}",
        change.sentence
    );
    assert!(render_text(&c).contains("again against first: nothing changed"));
}

#[test]
fn three_runs_compare_against_the_first() {
    let (a, b) = pair();
    let c = comparison(&[("a", &a), ("b", &b), ("c", &a)]);
    assert_eq!(c.changes.len(), 2);
    assert!(c.changes[1]
        .sentence
        .starts_with("c against a: nothing changed"));
    let text = render_text(&c);
    for head in ["B/A", "C/A", "B−A", "C−A"] {
        assert!(text.contains(head), "{head} in\n{text}");
    }
    assert!(c
        .figures
        .iter()
        .all(|f| f.values.len() == 3 && f.ratio.len() == 3));
}

#[test]
fn labels_are_escaped_for_each_output() {
    let (a, b) = pair();
    let c = comparison(&[("\u{1b}[31mred", &a), ("a|b*", &b)]);
    let text = render_text(&c);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("\\x1b[31mred"));
    let md = render_markdown(&c);
    assert!(md.contains("a\\|b\\*"), "{md}");
    assert!(!md.contains("| a|b* |"));
}

#[test]
fn comparison_json_snapshot() {
    let (a, b) = pair();
    insta::assert_json_snapshot!(comparison(&[("base", &a), ("more", &b)]));
}

#[test]
fn comparison_text_and_markdown_snapshots() {
    let (a, b) = pair();
    let c = comparison(&[("base", &a), ("more", &b)]);
    insta::assert_snapshot!("compare_text", render_text(&c));
    insta::assert_snapshot!("compare_markdown", render_markdown(&c));
}
