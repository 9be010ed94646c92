//! [`Table`]: a small table of numbers, HTML in a notebook and plain text elsewhere.

use super::*;

/// A small table of numbers, shown as HTML in a notebook (plain text elsewhere).
#[derive(Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: vec![] }
    }

    /// Adds a row of already formatted cells.
    pub fn row(mut self, cells: Vec<String>) -> Self {
        self.rows.push(cells);
        self
    }

    /// Shows the table in a notebook cell.
    pub fn evcxr_display(&self) {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
        let head: String = self.headers.iter().map(|h| format!("<th>{}</th>", esc(h))).collect();
        let body: String = self
            .rows
            .iter()
            .map(|r| {
                format!(
                    "<tr>{}</tr>",
                    r.iter().map(|c| format!("<td style=\"text-align:right\">{}</td>", esc(c))).collect::<String>()
                )
            })
            .collect();
        emit("text/html", &format!("<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"));
        emit("text/plain", &self.to_string());
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "Table", &self.headers.join(" | "), || self.evcxr_display())
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.len())
                    .chain([self.headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ")
        };
        writeln!(f, "{}", line(&self.headers))?;
        for r in &self.rows {
            writeln!(f, "{}", line(r))?;
        }
        Ok(())
    }
}
