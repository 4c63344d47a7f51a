//! The report: nothing while the session runs, one document at its end.

use crate::{
    session::{Session, Sink},
    view::report::{REPORT_TOP, text},
};

/// Rows per table in the text report.
const TEXT_ROWS: usize = 20;

pub struct Report {
    pub json: bool,
}

impl Sink for Report {
    fn finish(&mut self, s: &mut Session, end_ns: u64) -> anyhow::Result<()> {
        let summary = s.summary_named(REPORT_TOP, end_ns);
        let doc = s.report_doc(&summary);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            print!("{}", text(&doc, TEXT_ROWS));
        }
        Ok(())
    }
}
