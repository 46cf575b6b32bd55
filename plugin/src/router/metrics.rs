//! How well a router does on labelled prompts: accuracy, per-class precision and recall, and
//! the confusion matrix, printed as plain tables.

use std::fmt;

pub struct Evaluation {
    pub classes: Vec<String>,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    pub fn new(classes: Vec<String>) -> Self {
        let n = classes.len();
        Evaluation { classes, confusion: vec![vec![0; n]; n] }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.confusion[truth][predicted] += 1;
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
        Ok(())
    }
}
