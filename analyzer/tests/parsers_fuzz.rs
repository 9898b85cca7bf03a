//! Property tests: the parsers of untrusted input never panic, and what they
//! accept is consistent.

use proptest::prelude::*;
use uffdscope_analyzer::engine::guest::{parse_line, LineCounts};
use uffdscope_analyzer::inputs::rp::{self, RpMessage};
use uffdscope_trace::codec::Decoder;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn return_path_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = rp::parse(&bytes);
    }

    #[test]
    fn return_path_requests_round_trip(
        name in proptest::option::of("[a-z.]{1,40}"),
        start in any::<u64>(),
        len in any::<u32>(),
    ) {
        let bytes = rp::encode_req_pages(name.as_deref(), start, len);
        prop_assert_eq!(
            rp::parse(&bytes),
            vec![RpMessage::ReqPages { block: name, start, len }]
        );
    }

    #[test]
    fn guest_line_parser_never_panics(line in "\\PC{0,120}") {
        let mut counts = LineCounts::default();
        let _ = parse_line(&line, &mut counts);
    }

    #[test]
    fn guestperf_lines_parse_exactly(
        pid in 0u32..100_000,
        epoch in 0u64..4_000_000_000_000,
        dur in 0u64..1_000_000,
    ) {
        let mut counts = LineCounts::default();
        let line = format!("stress ({pid}): INFO: {epoch}ms copied 1 GB in {dur:05}ms");
        let s = parse_line(&line, &mut counts).expect("guestperf line parses");
        prop_assert_eq!(s.guest_end_ms, Some(epoch as f64));
        prop_assert!((s.dur_ms - dur as f64).abs() < 1e-9);
        prop_assert_eq!(counts.guestperf, 1);
    }

    #[test]
    fn record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut d = Decoder::new(&bytes);
        for _ in 0..100 {
            match d.next_record() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
