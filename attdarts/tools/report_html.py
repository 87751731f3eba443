"""`attdarts report RUN... --html OUT.html`: one self-contained page to read a search (or a
training) by eye.

The page needs nothing but itself: plots are PNG data URIs drawn by matplotlib, cells are SVG
drawn by graphviz and inlined, the style sheet and the epoch slider's few lines of script are
inline too; no network access, no script from elsewhere. It holds, in this order:

- the tables `attdarts report` prints (with the consensus of each group of seeds, its cells drawn
  with each edge as opaque as the share of seeds having it whole);
- per run: its configuration (config.json) and environment (environment.json, when the run
  has one), its learning curves, and for a search its decisiveness over the epochs
  (`language.decisiveness`, recomputed from weights.jsonl and the genotype-epochNNN.geno files, so
  old runs get it too), a table of the last epoch's margins, the architecture weights over the
  epochs (`attdarts plot`'s picture), a budgeted search's costs against its budget (`attdarts
  plot`'s second picture), and the derived cell of every epoch behind a slider, drawn with its
  weights (`attdarts render --weights`) beside the changes from the epoch before.

Without graphviz the cells are shown as text and the page says what to install. Accuracies are
read as fractions or percentages (a column whose values all lie in [0, 1] is taken as fractions)
and shown in percent.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

from attdarts.language import ir
from attdarts.language.errors import DslError
from attdarts.language.printer import cell_lines
from attdarts.records import json_objects
from attdarts.language import decisiveness as dec
from attdarts.tools import search_runs
from attdarts.tools.report_plots import decisiveness_plot, learning_curves, png
from attdarts.tools import report as reporting

EPOCH_DRAWINGS = 200  # at most this many epochs get a drawing (evenly spaced, last included)
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1500px; padding: 16px 28px; color: #1b1b1b; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 21px; margin-top: 34px;
     border-bottom: 2px solid #d0d7de; padding-bottom: 4px; } h3 { font-size: 17px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.undecided { background: #fde2c8; } td.decided { background: #dcf2dc; }
td.negative { background: #f8c9c4; }
code { font-size: 12px; background: #f3f5f7; padding: 1px 3px; border-radius: 3px; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.plot { max-width: 100%; height: auto; border: 1px solid #e5e8eb; }
.drawing svg { max-width: 100%; height: auto; }
.drawing { border: 1px solid #e5e8eb; padding: 6px; margin: 6px 0; }
.note { color: #555; font-size: 13px; } .synthetic { color: #b2182b; font-weight: bold; }
.summary { font-size: 15px; background: #f6f8fa; border-left: 4px solid #0969da;
           padding: 6px 12px; }
.epochs input { width: 420px; vertical-align: middle; }
details > summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
"""
# the slider shows one epoch's drawing; the check marks what rendered (tests read it back)
SCRIPT = """
function showEpoch(run, value) {
  document.querySelectorAll('[data-run="' + run + '"] .epoch').forEach(function (element) {
    element.hidden = element.dataset.epoch !== String(value);
  });
  var label = document.getElementById(run + '-label');
  if (label) { label.textContent = value; }
}
window.addEventListener('load', function () {
  var sizes = [];
  document.querySelectorAll('img.plot, .drawing svg').forEach(function (element) {
    var box = element.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) { return; }
    sizes.push({kind: element.tagName.toLowerCase(), id: element.closest('[id]') ?
                element.closest('[id]').id : '', width: Math.round(box.width),
                height: Math.round(box.height),
                loaded: element.tagName !== 'IMG' || (element.complete && element.naturalWidth > 0)});
  });
  document.body.setAttribute('data-rendered', JSON.stringify(sizes));
});
"""


class PageError(reporting.ReportError):
    """A run directory the page cannot be made from (one line)."""


# ---------------------------------------------------------------------------------------------
# pieces


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


_XML_HEADER = re.compile(r"<\?xml.*?\?>|<!DOCTYPE.*?>|<!--.*?-->", re.DOTALL)
_ID = re.compile(r'\s(id|class)="[^"]*"')


def svg_drawing(dot_text: str) -> str | None:
    """The drawing as inline SVG (graphviz's `dot`), or None without graphviz."""
    from attdarts.tools.render import GraphvizMissing, RenderFailed, run_dot

    try:
        svg = run_dot(dot_text, "svg").decode("utf-8")
    except (GraphvizMissing, RenderFailed):
        return None
    svg = _XML_HEADER.sub("", svg).strip()
    return _ID.sub("", svg)  # ids repeat across drawings; the page refers to none of them


def _cell_text(genotype: ir.Genotype) -> str:
    lines = []
    for kind in ir.CELL_KINDS:
        lines.append(f"{kind}:")
        lines += ["    " + line for line in cell_lines(genotype.cell(kind))]
    return "<pre>" + _escape("\n".join(lines)) + "</pre>"


def _drawing(dot_text: str, genotype: ir.Genotype) -> str:
    svg = svg_drawing(dot_text)
    if svg is None:
        return ('<div class="note">graphviz\'s <code>dot</code> is not installed, so the cells '
                "are shown as text (apt-get install graphviz)</div>" + _cell_text(genotype))
    return f'<div class="drawing">{svg}</div>'


def _key_values(values: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _key_values(value, name + ".")
        elif isinstance(value, list):
            rows.append((name, ", ".join(json.dumps(item) if isinstance(item, (dict, list))
                                         else str(item) for item in value)))
        else:
            rows.append((name, "null" if value is None else str(value)))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], classes=None) -> str:
    head = "".join(f"<th>{_escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        cells = []
        for column, cell in enumerate(row):
            css = classes[index][column] if classes else ""
            cells.append(f'<td class="{css}">{cell}</td>' if css else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _json_file(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------
# Markdown of `attdarts report` -> HTML


def markdown_html(text: str) -> str:
    """The Markdown `attdarts report` prints (headings, tables, lists, paragraphs, `code`)."""
    out: list[str] = []
    table: list[list[str]] = []
    items: list[str] = []

    def inline(cell: str) -> str:
        parts = cell.split("`")
        return "".join(f"<code>{_escape(part)}</code>" if index % 2 else _escape(part)
                       for index, part in enumerate(parts))

    def flush() -> None:
        if table:
            header, rows = table[0], [row for row in table[2:]]
            numeric = [all(re.fullmatch(r"[-+0-9.,/ M%]*", row[i].strip() if i < len(row) else "")
                           for row in rows) for i in range(len(header))]
            out.append(_table(header, [[inline(cell) for cell in row] for row in rows],
                              [["num" if numeric[i] else "" for i in range(len(row))]
                               for row in rows]))
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")) + 1)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# sections


def _signed(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if abs(value) >= 0.0001 or value == 0 else f"{value:+.1e}"


def _margin_class(value: float | None, threshold: float) -> str:
    if value is None:
        return ""
    if value < 0:
        return "num negative"
    return "num decided" if value >= threshold else "num undecided"


def margins_table(result: dec.Decisiveness) -> str:
    header = ("cell", "edge", "kept operation", "weight", "runner-up", "lead", "kept attention",
              "weight", "runner-up", "lead", "input lead", "entropy (op / att)")
    rows, classes = [], []
    for edge in result.edges:
        operation, attention = edge.operation, edge.attention
        rows.append([
            edge.cell, _escape(edge.edge), f"<code>{_escape(operation.kept)}</code>",
            f"{operation.weight:.4f}", _escape(operation.runner_up or "–"),
            _signed(operation.margin),
            f"<code>{_escape(attention.kept)}</code>" if attention else "–",
            f"{attention.weight:.4f}" if attention else "–",
            _escape(attention.runner_up or "–") if attention else "–",
            _signed(attention.margin) if attention else "–", _signed(edge.input_margin),
            f"{operation.entropy:.3f}" + (f" / {attention.entropy:.3f}" if attention else "")])
        threshold = result.threshold
        classes.append(["", "", "", "num", "", _margin_class(operation.margin, threshold), "",
                        "num", "", _margin_class(attention.margin, threshold) if attention else "",
                        _margin_class(edge.input_margin, threshold), "num"])
    for kind, output in result.outputs.items():
        rows.append([kind, "c_k (output)", "–", "–", "–", "–", f"<code>{_escape(output.kept)}</code>",
                     f"{output.weight:.4f}", _escape(output.runner_up or "–"),
                     _signed(output.margin), "–", f"{output.entropy:.3f}"])
        classes.append(["", "", "", "", "", "", "", "num", "",
                        _margin_class(output.margin, result.threshold), "", "num"])
    return _table(header, rows, classes)


def _epoch_drawings(run_id: str, epochs: list[search_runs.EpochDecisiveness],
                    timeline: dict[int, list[str]]) -> str:
    from attdarts.tools.render import WEIGHT_LEGEND, genotype_dot, weight_styles

    shown = epochs
    if len(epochs) > EPOCH_DRAWINGS:  # evenly spaced, the last one always
        step = len(epochs) / EPOCH_DRAWINGS
        shown = [epochs[int(i * step)] for i in range(EPOCH_DRAWINGS - 1)] + [epochs[-1]]
    last = shown[-1].epoch
    parts = [f'<div class="epochs" data-run="{run_id}">',
             f'<p><label>epoch <input type="range" min="{shown[0].epoch}" max="{last}" '
             f'step="1" value="{last}" list="{run_id}-ticks" '
             f"oninput=\"showEpoch('{run_id}', this.value)\"></label> "
             f'<b id="{run_id}-label">{last}</b> of {last}</p>',
             f'<datalist id="{run_id}-ticks">'
             + "".join(f'<option value="{entry.epoch}">' for entry in shown) + "</datalist>"]
    for entry in shown:
        legend = (f"epoch {entry.epoch}: " + entry.decisiveness.summary() + ". "
                  + WEIGHT_LEGEND.format(entry.decisiveness.threshold))
        dot_text = genotype_dot(entry.genotype,
                                styles=weight_styles(entry.genotype, entry.decisiveness),
                                legend=legend)
        changes = timeline.get(entry.epoch, [])
        change_text = ("<ul class='note'>" + "".join(f"<li>{_escape(line)}</li>"
                                                   for line in changes) + "</ul>"
                       if changes else "<p class='note'>no change from the epoch before</p>")
        hidden = "" if entry.epoch == last else " hidden"
        parts.append(f'<div class="epoch" data-epoch="{entry.epoch}"{hidden}>'
                     f"{change_text}{_drawing(dot_text, entry.genotype)}</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _timeline(genotypes: list[tuple[int, ir.Genotype]]) -> dict[int, list[str]]:
    from attdarts.tools.diff import diff_genotypes

    result: dict[int, list[str]] = {}
    for (_, before), (epoch, after) in zip(genotypes, genotypes[1:]):
        result[epoch] = [change.text() for change in diff_genotypes(before, after)]
    if genotypes:
        result.setdefault(genotypes[0][0], ["initial genotype"])
    return result


def _settings(run: Path) -> str:
    parts = []
    config = _json_file(run / "config.json")
    if config is not None:
        rows = [(f"<code>{_escape(key)}</code>", _escape(value)) for key, value in _key_values(config)]
        parts.append("<details><summary>configuration (config.json)</summary>"
                     + _table(("setting", "value"), rows) + "</details>")
    environment = _json_file(run / "environment.json")
    if environment is not None:
        rows = [(f"<code>{_escape(key)}</code>", _escape(value))
                for key, value in _key_values(environment)]
        parts.append("<details><summary>environment (environment.json)</summary>"
                     + _table(("item", "value"), rows) + "</details>")
    else:
        parts.append("<p class='note'>no environment.json in this run directory</p>")
    return "\n".join(parts)


def search_section(run: Path, run_id: str) -> str:
    from attdarts.tools.plot import RunError, load_run, weights_figure
    from attdarts.tools.plot_budget import budget_figure, read_budget

    parts = [f'<section id="{run_id}"><h2>search <code>{_escape(run)}</code></h2>']
    records = json_objects(run / "metrics.jsonl")
    synthetic = any(record.get("synthetic") for record in records)
    if synthetic:
        parts.append("<p class='synthetic'>SYNTHETIC DATA: random images and labels, a smoke "
                     "test, not a real search</p>")
    parts.append(_settings(run))
    try:
        epochs = search_runs.run_decisiveness(run)
    except (dec.DecisivenessError, DslError) as error:  # say so, keep the page
        epochs = []
        parts.append(f"<p class='note'>no decisiveness: {_escape(str(error).splitlines()[0])}</p>")
    if epochs:
        last = epochs[-1]
        parts.append(f"<p class='summary'>epoch {last.epoch}: {_escape(last.decisiveness.summary())}; "
                     f"{_escape(dec.log_line(last.decisiveness, last.changed_epoch).split('; ', 1)[1])}"
                     "</p>")
    parts.append("<h3>learning curves</h3>")
    curves = learning_curves(records, search=True)
    parts.append(curves or "<p class='note'>no epochs in metrics.jsonl</p>")
    if epochs:
        parts.append("<h3>decisiveness over the epochs</h3>")
        parts.append("<p class='note'>margin of an edge: the smallest lead of its kept "
                     "operation, attention and input over the runner-up (README \"Reading a "
                     "search\"); decided: at least the threshold.</p>")
        parts.append(decisiveness_plot(epochs))
        parts.append(f"<h3>margins at epoch {epochs[-1].epoch}</h3>")
        parts.append(margins_table(epochs[-1].decisiveness))
    try:
        loaded = load_run(run)
    except RunError:
        loaded = None
    if loaded is not None and loaded.weights:
        parts.append("<h3>architecture weights over the epochs</h3>")
        parts.append("<p class='note'>each heatmap coloured from its own smallest to its largest "
                     "weight (read the numbers off its colour bar); the kept candidate boxed.</p>")
        parts.append(png(weights_figure(loaded.weights, run.name, synthetic=loaded.synthetic)))
    budget = read_budget(run)
    if budget is not None:
        parts.append("<h3>budget</h3>")
        parts.append(f"<p class='note'>{_escape(budget.summary())}: the final network's expected "
                     "cost under each epoch's mixture weights and the derived genotype's cost "
                     "(README \"The budget method\").</p>")
        parts.append(png(budget_figure(budget, run.name)))
    if epochs:
        parts.append("<h3>the derived cell, epoch by epoch</h3>")
        genotypes = [(entry.epoch, entry.genotype) for entry in epochs]
        parts.append(_epoch_drawings(run_id, epochs, _timeline(genotypes)))
    parts.append("</section>")
    return "\n".join(parts)


def training_section(run: Path, run_id: str) -> str:
    parts = [f'<section id="{run_id}"><h2>training <code>{_escape(run)}</code></h2>',
             _settings(run), "<h3>learning curves</h3>"]
    curves = learning_curves(json_objects(run / "metrics.jsonl"), search=False)
    parts.append(curves or "<p class='note'>no epochs in metrics.jsonl</p>")
    parts.append("</section>")
    return "\n".join(parts)


def consensus_section(summary: dict) -> str:
    """Each group of seeds' consensus, drawn with the agreement of its edges."""
    from attdarts.tools import consensus
    from attdarts.tools.render import EDGE_COLOR, EdgeStyle, genotype_dot

    parts = []
    for index, entry in enumerate(summary["searches"]):
        runs = [Path(run["path"]) for run in entry["per_run"]]
        if len(runs) < 2 or not entry.get("consensus"):
            continue
        try:
            result = consensus.combine([consensus.read_member(run) for run in runs])
        except consensus.ConsensusError:
            continue
        styles = {}
        for kind in ir.CELL_KINDS:
            cell = result.genotype.cell(kind)
            keys = [(kind, node.name, position) for node in cell.nodes
                    for position in range(len(node.edges))]
            agreements = [edge for edge in result.edges if edge.cell == kind]
            for key, agreement in zip(keys, agreements):
                share = agreement.agreement
                styles[key] = EdgeStyle(
                    penwidth=1.0 + 3.0 * share,
                    color=f"{EDGE_COLOR}{round(255 * (0.25 + 0.75 * share)):02x}",
                    notes=(f"whole edge {agreement.edge_votes}/{agreement.seeds}",))
        legend = (f"consensus of {len(runs)} seeds: width and opacity from the share of seeds "
                  "having each edge whole")
        parts.append(f'<section id="consensus-{index}"><h2>consensus of {len(runs)} seeds: '
                     f"{_escape(entry['space'])}</h2>")
        parts.append(f"<p>mean whole-edge agreement {result.agreement:.2f}; the votes of "
                     "every edge are in the table above.</p>")
        parts.append(_drawing(genotype_dot(result.genotype, styles=styles, legend=legend),
                              result.genotype))
        parts.append("</section>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# the page


def page(runs: Sequence[Path], summary: dict, markdown: str) -> str:
    """The whole page for the run directories `runs` (as `reporting.find_runs` lists them),
    `summary` (`reporting.aggregate`) and `markdown` (what `attdarts report` prints)."""
    sections = [f"<h1>attdarts report</h1><p class='note'>{len(runs)} run"
                f"{'' if len(runs) == 1 else 's'}: "
                + ", ".join(f'<a href="#run-{i}"><code>{_escape(run)}</code></a>'
                            for i, run in enumerate(runs)) + "</p>",
                "<section id='tables'>" + markdown_html(markdown) + "</section>",
                consensus_section(summary)]
    for index, run in enumerate(runs):
        kind = reporting.run_kind(run)
        run_id = f"run-{index}"
        sections.append(search_section(run, run_id) if kind == "search"
                        else training_section(run, run_id))
    body = "\n".join(section for section in sections if section)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>attdarts report: {_escape(runs[0].name if runs else '')}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body>\n{body}\n"
            "</body></html>\n")


def write_page(paths: Sequence[str | Path], output: Path, summary: dict, markdown: str) -> Path:
    """Write the page for `paths` (run directories or folders of them) atomically."""
    from attdarts.files import atomic_write_text

    runs = reporting.find_runs(paths)
    atomic_write_text(output, page(runs, summary, markdown))
    return output
