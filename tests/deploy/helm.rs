//! A renderer for the part of Helm's template language the chart in `deploy/helm/regent` uses, so that the tests
//! can check what the chart produces without a `helm` binary (none can be installed here).
//!
//! Supported: text with `{{ }}` actions and `{{-` / `-}}` whitespace trimming; comments `{{/* */}}`; `define`,
//! `if` / `else` / `end`, `with`, `range` (dot = each element; no variables but `$`); pipelines `a | f x` whose
//! values are `.`, `$`, field paths (`.Values.a.b`, `$.Release.Name`), string and number literals, `true` /
//! `false` and parenthesised pipelines; the functions `include`, `quote`, `toYaml`, `nindent`, `indent`,
//! `default`, `required`, `printf` (`%s`, `%d`, `%v`), `trunc`, `trimSuffix`, `not`, `and`, `or`, `eq`. Anything
//! else is an error, so a template that strays from this part fails the tests instead of being checked wrongly.
//! The context is `.Values` (values.yaml, overridden by the test's values), `.Chart` (Chart.yaml's fields,
//! capitalised as Helm does: `Name`, `Version`, `AppVersion`), `.Release` (`Name`, `Namespace`, `Service`).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

/// One rendered template: its file name and its text.
pub type Rendered = Vec<(String, String)>;

/// Renders every template of the chart in `dir` (`templates/*.yaml`, with the `define`s of every file), with
/// `values` merged over `values.yaml`.
pub fn render(dir: &Path, values: &Value, release: &str, namespace: &str) -> Result<Rendered, String> {
    let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
    let yaml = |path: &Path| -> Result<Value, String> {
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::to_value(value).map_err(|e| format!("{}: {e}", path.display()))
    };
    let chart = yaml(&dir.join("Chart.yaml"))?;
    let mut merged = yaml(&dir.join("values.yaml"))?;
    merge(&mut merged, values);
    let mut chart_ctx = Map::new();
    for (key, name) in [("name", "Name"), ("version", "Version"), ("appVersion", "AppVersion")] {
        chart_ctx.insert(name.into(), chart[key].clone());
    }
    let root = serde_json::json!({
        "Values": merged,
        "Chart": chart_ctx,
        "Release": { "Name": release, "Namespace": namespace, "Service": "Helm" },
    });

    let mut files: Vec<_> = std::fs::read_dir(dir.join("templates"))
        .map_err(|e| e.to_string())?
        .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut defines = HashMap::new();
    let mut templates = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let nodes = parse(&read(path)?).map_err(|e| format!("{name}: {e}"))?;
        let body = collect_defines(nodes, &mut defines);
        if name.ends_with(".yaml") && !name.starts_with('_') {
            templates.push((name, body));
        }
    }
    let renderer = Renderer { defines, root };
    templates
        .into_iter()
        .map(|(name, body)| {
            let text = renderer.render(&body, &renderer.root).map_err(|e| format!("{name}: {e}"))?;
            Ok((name, text))
        })
        .collect()
}

/// Merges `over` into `base`, maps key by key.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, over) => *base = over.clone(),
    }
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(String),
    If { cond: String, then: Vec<Node>, otherwise: Vec<Node> },
    With { value: String, then: Vec<Node>, otherwise: Vec<Node> },
    Range { value: String, body: Vec<Node> },
    Define { name: String, body: Vec<Node> },
}

/// Splits the text into text and actions (trimming as `{{-` and `-}}` say), then nests the control actions.
fn parse(source: &str) -> Result<Vec<Node>, String> {
    let mut tokens: Vec<(bool, String)> = Vec::new(); // (is_action, text)
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("an action is not closed")?;
        let mut action = &after[..end];
        if let Some(trimmed) = action.strip_prefix('-') {
            text = text.trim_end().to_string();
            action = trimmed;
        }
        let trim_next = action.ends_with('-') && action.len() > 1 && action[..action.len() - 1].ends_with(' ');
        if trim_next {
            action = &action[..action.len() - 1];
        }
        tokens.push((false, text));
        tokens.push((true, action.trim().to_string()));
        rest = &after[end + 2..];
        if trim_next {
            rest = rest.trim_start();
        }
    }
    tokens.push((false, rest.to_string()));
    let mut iter = tokens.into_iter();
    let (nodes, end) = nest(&mut iter)?;
    match end {
        None => Ok(nodes),
        Some(keyword) => Err(format!("unexpected {{{{ {keyword} }}}}")),
    }
}

/// Nests actions up to an `else` or `end` (returned) or the end of input (`None`).
fn nest(tokens: &mut impl Iterator<Item = (bool, String)>) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while let Some((is_action, text)) = tokens.next() {
        if !is_action {
            if !text.is_empty() {
                nodes.push(Node::Text(text));
            }
            continue;
        }
        if text.starts_with("/*") {
            continue;
        }
        let (keyword, argument) = text.split_once(' ').map_or((text.as_str(), ""), |(k, a)| (k, a.trim()));
        match keyword {
            "end" | "else" if argument.is_empty() => return Ok((nodes, Some(keyword.into()))),
            "if" | "with" => {
                let (then, end) = nest(tokens)?;
                let otherwise = match end.as_deref() {
                    Some("end") => Vec::new(),
                    Some("else") => match nest(tokens)? {
                        (otherwise, Some(end)) if end == "end" => otherwise,
                        _ => return Err(format!("{keyword} {argument}: else without end")),
                    },
                    _ => return Err(format!("{keyword} {argument}: no end")),
                };
                let value = argument.to_string();
                nodes.push(if keyword == "if" {
                    Node::If { cond: value, then, otherwise }
                } else {
                    Node::With { value, then, otherwise }
                });
            }
            "range" | "define" => {
                let (body, end) = nest(tokens)?;
                if end.as_deref() != Some("end") {
                    return Err(format!("{keyword} {argument}: no end"));
                }
                nodes.push(if keyword == "range" {
                    Node::Range { value: argument.into(), body }
                } else {
                    Node::Define { name: argument.trim_matches('"').into(), body }
                });
            }
            "template" | "block" | "else" | "end" => return Err(format!("{{{{ {text} }}}} is not supported")),
            _ => nodes.push(Node::Action(text)),
        }
    }
    Ok((nodes, None))
}

fn collect_defines(nodes: Vec<Node>, defines: &mut HashMap<String, Vec<Node>>) -> Vec<Node> {
    nodes
        .into_iter()
        .filter_map(|node| match node {
            Node::Define { name, body } => {
                defines.insert(name, body);
                None
            }
            other => Some(other),
        })
        .collect()
}

struct Renderer {
    defines: HashMap<String, Vec<Node>>,
    root: Value,
}

impl Renderer {
    fn render(&self, nodes: &[Node], dot: &Value) -> Result<String, String> {
        let mut out = String::new();
        for node in nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Action(pipeline) => out.push_str(&print(&self.pipeline(pipeline, dot)?)),
                Node::If { cond, then, otherwise } => {
                    let branch = if truthy(&self.pipeline(cond, dot)?) { then } else { otherwise };
                    out.push_str(&self.render(branch, dot)?);
                }
                Node::With { value, then, otherwise } => {
                    let value = self.pipeline(value, dot)?;
                    if truthy(&value) {
                        out.push_str(&self.render(then, &value)?);
                    } else {
                        out.push_str(&self.render(otherwise, dot)?);
                    }
                }
                Node::Range { value, body } => match self.pipeline(value, dot)? {
                    Value::Array(items) => {
                        for item in &items {
                            out.push_str(&self.render(body, item)?);
                        }
                    }
                    Value::Object(map) => {
                        for item in map.values() {
                            out.push_str(&self.render(body, item)?);
                        }
                    }
                    Value::Null => {}
                    other => return Err(format!("range over {other}")),
                },
                Node::Define { .. } => return Err("define inside a template body".into()),
            }
        }
        Ok(out)
    }

    /// `a | f x | g`: each command after the first gets the previous result as its last argument.
    fn pipeline(&self, text: &str, dot: &Value) -> Result<Value, String> {
        let mut result: Option<Value> = None;
        for command in split_top(text, '|') {
            let words = words(command.trim())?;
            let (head, args) = words.split_first().ok_or_else(|| format!("empty command in {text:?}"))?;
            let mut values = args.iter().map(|a| self.operand(a, dot)).collect::<Result<Vec<_>, _>>()?;
            if let Some(previous) = result.take() {
                values.push(previous);
            }
            result = Some(if is_function(head) {
                self.call(head, values, dot)?
            } else if values.is_empty() {
                self.operand(head, dot)?
            } else {
                return Err(format!("{head} is not a function"));
            });
        }
        result.ok_or_else(|| format!("empty pipeline {text:?}"))
    }

    fn operand(&self, word: &str, dot: &Value) -> Result<Value, String> {
        if let Some(inner) = word.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
            return self.pipeline(inner, dot);
        }
        if let Some(text) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
            return Ok(Value::String(text.replace("\\\"", "\"")));
        }
        match word {
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            "." => return Ok(dot.clone()),
            "$" => return Ok(self.root.clone()),
            _ => {}
        }
        if let Ok(n) = word.parse::<i64>() {
            return Ok(Value::from(n));
        }
        let (base, path) = if let Some(path) = word.strip_prefix("$.") {
            (&self.root, path)
        } else if let Some(path) = word.strip_prefix('.') {
            (dot, path)
        } else if is_function(word) {
            return self.call(word, Vec::new(), dot);
        } else {
            return Err(format!("unknown word {word:?}"));
        };
        Ok(path.split('.').try_fold(base, |value, key| value.get(key)).cloned().unwrap_or(Value::Null))
    }

    fn call(&self, name: &str, args: Vec<Value>, _dot: &Value) -> Result<Value, String> {
        let arity = |n: usize| {
            if args.len() == n { Ok(()) } else { Err(format!("{name} takes {n} arguments, got {}", args.len())) }
        };
        let int = |v: &Value| v.as_i64().ok_or_else(|| format!("{name}: {v} is not an integer"));
        Ok(match name {
            "include" => {
                arity(2)?;
                let template = args[0].as_str().ok_or("include: a template name")?;
                let body = self.defines.get(template).ok_or_else(|| format!("no template {template:?}"))?;
                Value::String(self.render(body, &args[1])?)
            }
            "quote" => {
                arity(1)?;
                Value::String(format!("\"{}\"", print(&args[0]).replace('\\', "\\\\").replace('"', "\\\"")))
            }
            "toYaml" => {
                arity(1)?;
                let text = serde_yaml_ng::to_string(&args[0]).map_err(|e| e.to_string())?;
                Value::String(text.trim_end().to_string())
            }
            "nindent" | "indent" => {
                arity(2)?;
                let pad = " ".repeat(usize::try_from(int(&args[0])?).map_err(|e| e.to_string())?);
                let text = print(&args[1]);
                let indented: Vec<String> = text.lines().map(|l| format!("{pad}{l}")).collect();
                let joined = indented.join("\n");
                Value::String(if name == "nindent" { format!("\n{joined}") } else { joined })
            }
            "default" => {
                arity(2)?;
                if truthy(&args[1]) { args[1].clone() } else { args[0].clone() }
            }
            "required" => {
                arity(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    return Err(format!("required: {}", print(&args[0])));
                }
            }
            "printf" => {
                let format = args.first().and_then(Value::as_str).ok_or("printf: a format")?;
                let mut rest = args[1..].iter();
                let mut out = String::new();
                let mut chars = format.chars();
                while let Some(c) = chars.next() {
                    if c != '%' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('s' | 'd' | 'v') => out.push_str(&print(rest.next().ok_or("printf: too few arguments")?)),
                        Some('%') => out.push('%'),
                        other => return Err(format!("printf: %{other:?} is not supported")),
                    }
                }
                Value::String(out)
            }
            "trunc" => {
                arity(2)?;
                let n = usize::try_from(int(&args[0])?).map_err(|e| e.to_string())?;
                Value::String(print(&args[1]).chars().take(n).collect())
            }
            "trimSuffix" => {
                arity(2)?;
                let (suffix, text) = (print(&args[0]), print(&args[1]));
                Value::String(text.strip_suffix(suffix.as_str()).unwrap_or(&text).to_string())
            }
            "not" => {
                arity(1)?;
                Value::Bool(!truthy(&args[0]))
            }
            "and" => Value::Bool(args.iter().all(truthy)),
            "or" => Value::Bool(args.iter().any(truthy)),
            "eq" => {
                arity(2)?;
                Value::Bool(args[0] == args[1])
            }
            _ => return Err(format!("function {name} is not supported")),
        })
    }
}

fn is_function(word: &str) -> bool {
    matches!(
        word,
        "include"
            | "quote"
            | "toYaml"
            | "nindent"
            | "indent"
            | "default"
            | "required"
            | "printf"
            | "trunc"
            | "trimSuffix"
            | "not"
            | "and"
            | "or"
            | "eq"
    )
}

/// Go templates' truth: false, 0, nil, and empty strings, lists and maps are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How a value prints in a template (nil prints nothing, as Helm does).
fn print(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits at `separator` outside quotes and parentheses.
fn split_top(text: &str, separator: char) -> Vec<&str> {
    let (mut parts, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    let mut previous = ' ';
    for (i, c) in text.char_indices() {
        match c {
            '"' if previous != '\\' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == separator && !quoted && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
        previous = c;
    }
    parts.push(&text[start..]);
    parts
}

/// The words of a command: quoted strings and parenthesised pipelines are one word each.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut end = start;
        let (mut depth, mut quoted, mut previous) = (0i32, false, ' ');
        while let Some(&(i, c)) = chars.peek() {
            match c {
                '"' if previous != '\\' => quoted = !quoted,
                '(' if !quoted => depth += 1,
                ')' if !quoted => depth -= 1,
                c if c.is_whitespace() && !quoted && depth == 0 => break,
                _ => {}
            }
            previous = c;
            end = i + c.len_utf8();
            chars.next();
        }
        if quoted || depth != 0 {
            return Err(format!("unbalanced quotes or parentheses in {text:?}"));
        }
        words.push(text[start..end].to_string());
    }
    Ok(words)
}
