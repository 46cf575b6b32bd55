//! How well a router does on labelled prompts: accuracy, per-class precision and recall, the
//! confusion matrix and accuracy per source family, printed as plain tables.

use std::fmt;

pub struct Evaluation {
    pub classes: Vec<String>,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub families: FamilyAccuracy,
}

impl Evaluation {
    pub fn new(classes: Vec<String>) -> Self {
        let n = classes.len();
        Evaluation { classes, confusion: vec![vec![0; n]; n], families: FamilyAccuracy::default() }
    }

    /// The index of class `name`, if it is one.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }

    /// One prompt of class `truth` (from `source`, the prompt's "source") routed to `predicted`.
    pub fn add(&mut self, truth: usize, predicted: usize, source: Option<&str>) {
        self.confusion[truth][predicted] += 1;
        self.families.add(source, &self.classes[truth], truth == predicted);
    }

    pub fn total(&self) -> usize {
        self.confusion.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: usize = (0..self.classes.len()).map(|c| self.confusion[c][c]).sum();
        right as f64 / self.total().max(1) as f64
    }

    pub fn precision(&self, c: usize) -> f64 {
        let predicted: usize = self.confusion.iter().map(|row| row[c]).sum();
        self.confusion[c][c] as f64 / predicted.max(1) as f64
    }

    pub fn recall(&self, c: usize) -> f64 {
        let truth: usize = self.confusion[c].iter().sum();
        self.confusion[c][c] as f64 / truth.max(1) as f64
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.classes.iter().map(|c| c.len()).max().unwrap_or(0).max(9);
        writeln!(f, "accuracy {:.4} ({} prompts)", self.accuracy(), self.total())?;
        writeln!(f, "{:<w$}  precision  recall  count", "class")?;
        for (c, name) in self.classes.iter().enumerate() {
            let count: usize = self.confusion[c].iter().sum();
            writeln!(f, "{name:<w$}  {:>9.4}  {:>6.4}  {count:>5}", self.precision(c), self.recall(c))?;
        }
        write!(f, "{:<w$}", "truth\\pred")?;
        for name in &self.classes {
            write!(f, "  {name:>w$}")?;
        }
        writeln!(f)?;
        for (c, name) in self.classes.iter().enumerate() {
            write!(f, "{name:<w$}")?;
            for n in &self.confusion[c] {
                write!(f, "  {n:>w$}")?;
            }
            writeln!(f)?;
        }
        write!(f, "{}", self.families)
    }
}

/// Accuracy per source family: the part of each prompt's "source" before its first '/', with
/// the prompt's true class ("gsm-symbolic (math)", "sharegpt (chat)"), so that one overall
/// score cannot hide a family the router gets wrong.
#[derive(Default)]
pub struct FamilyAccuracy {
    /// family -> (right, total)
    counts: std::collections::BTreeMap<String, (usize, usize)>,
}

impl FamilyAccuracy {
    pub fn add(&mut self, source: Option<&str>, truth: &str, right: bool) {
        let family = source.map_or("(no source)", |s| s.split_once('/').map_or(s, |(family, _)| family));
        let entry = self.counts.entry(format!("{family} ({truth})")).or_default();
        entry.0 += usize::from(right);
        entry.1 += 1;
    }

    /// (family, accuracy, count), in family order.
    pub fn rows(&self) -> impl Iterator<Item = (&str, f64, usize)> {
        self.counts.iter().map(|(f, &(right, total))| (f.as_str(), right as f64 / total.max(1) as f64, total))
    }
}

impl fmt::Display for FamilyAccuracy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.counts.keys().map(String::len).max().unwrap_or(0).max(13);
        writeln!(f, "{:<w$}  accuracy  count", "source family")?;
        for (family, accuracy, count) in self.rows() {
            writeln!(f, "{family:<w$}  {accuracy:>8.4}  {count:>5}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_the_source_prefix_and_the_true_class() {
        let mut acc = FamilyAccuracy::default();
        acc.add(Some("sharegpt/abc_1"), "chat", true);
        acc.add(Some("sharegpt/def"), "chat", false);
        acc.add(Some("sharegpt/xyz"), "code", true);
        acc.add(Some("HumanEval/3"), "code", true);
        acc.add(None, "math", false);
        let rows: Vec<_> = acc.rows().map(|(f, a, n)| (f.to_string(), a, n)).collect();
        assert_eq!(
            rows,
            [
                ("(no source) (math)".to_string(), 0.0, 1),
                ("HumanEval (code)".to_string(), 1.0, 1),
                ("sharegpt (chat)".to_string(), 0.5, 2),
                ("sharegpt (code)".to_string(), 1.0, 1),
            ]
        );
        let printed = acc.to_string();
        let line = printed.lines().find(|l| l.starts_with("sharegpt (chat)")).unwrap_or_else(|| panic!("{printed}"));
        assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["sharegpt", "(chat)", "0.5000", "2"]);
    }
}
