"""The confidence report as one self-contained HTML file.

Everything is inline (style, SVG charts, thumbnails as data: URIs), so the file opens offline
and can be attached to a bug or copied out of a bucket. Every string from the run (class
names, URIs, reasons, settings) is escaped with `html.escape`, and a Content-Security-Policy
allows exactly one script: the table sorter below, by its hash. It carries no data; it only
reorders rows using the cells' data-value attributes.
"""

import base64
import binascii
import datetime
import hashlib
import html
import json

from pipeline.report import svg
from pipeline.report.summary import RANDOM_TEACHER_WARNING

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 0 auto; max-width: 1200px; padding: 0 24px 48px; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; } .warning { background: #fff4e0; border-left: 4px solid #e0892c; padding: 6px 10px; margin: 6px 0; }
.banner { background: #b3261e; color: #fff; font-size: 18px; font-weight: bold; padding: 12px 16px; margin: 12px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 22px; } .card span { color: #666; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; align-items: start; }
svg.chart { max-width: 100%; height: auto; } table { border-collapse: collapse; margin: 8px 0; }
td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; vertical-align: top; }
td.text, th.text { text-align: left; } td.name { min-width: 9em; max-width: 280px; overflow-wrap: anywhere; } th { background: #f6f7f9; position: sticky; top: 0; }
th[data-type] { cursor: pointer; } th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; } tr.current td { background: #fdecec; font-weight: 600; }
.bar { display: inline-block; height: 10px; background: #3467b0; vertical-align: middle; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid #eee; }
.examples { display: flex; gap: 24px; flex-wrap: wrap; margin-bottom: 14px; }
figure { display: inline-block; margin: 2px; text-align: center; font-size: 11px; color: #555; }
figure img { display: block; width: 64px; height: 64px; object-fit: contain; background: #f3f3f3; }
code { word-break: break-all; }
.settings { display: flex; flex-wrap: wrap; gap: 6px 8px; }
.settings span { background: #f6f7f9; border-radius: 4px; padding: 2px 8px; font-size: 13px; }
"""

SORT_SCRIPT = """
function value(text) {
  var number = parseFloat(text);
  return isNaN(number) ? -1e300 : number;  // empty cells (no data) sort below every number
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th[data-type]").forEach(function (header, column) {
    header.addEventListener("click", function () {
      var ascending = header.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var numeric = header.getAttribute("data-type") === "number";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].getAttribute("data-value"), y = b.cells[column].getAttribute("data-value");
        var order = numeric ? value(x) - value(y) : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
// report.html#sort=kept (or #sort=kept-descending) opens the class table sorted: a link can
// point a colleague at the starved classes.
var wanted = /^#sort=([a-z_]+?)(-descending)?$/.exec(location.hash);
if (wanted) {
  var header = document.querySelector('th[data-key="' + wanted[1] + '"]');
  if (header) { header.click(); if (wanted[2]) { header.click(); } }
}
document.documentElement.setAttribute("data-sorter", "ready");
"""


def _escape(value):
    if isinstance(value, (dict, list, bool)) or value is None:
        value = json.dumps(value)
    return html.escape(str(value))


def _number(value, digits=3, percent=False):
    if value is None:
        return "-"
    if percent:
        return f"{value:.1%}"
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _cell(value, digits=3, text=False, percent=False, css="text"):
    """A table cell whose data-value lets the sorter order it without parsing formatted text."""
    if text or not (value is None or isinstance(value, (int, float))):  # data not a number: shown as text
        return f'<td class="{css}" data-value="{_escape(value)}">{_escape(value)}</td>'
    data = "" if value is None else repr(float(value))
    return f'<td data-value="{data}">{_number(value, digits, percent)}</td>'


def _header(columns):
    cells = []
    for label, kind in columns:
        css = ' class="text"' if kind == "text" else ""
        key = label.rstrip(".").replace(" ", "_")
        cells.append(f'<th{css} data-type="{kind}" data-key="{html.escape(key)}">{html.escape(label)}</th>')
    return f"<thead><tr>{''.join(cells)}</tr></thead>"


def thumbnail_uri(encoded):
    """A data: URI for a base64 JPEG/PNG thumbnail from stats.json, or None when it is not one.

    The base64 is decoded and re-encoded, so only an image the browser would decode anyway can
    reach the src attribute, whatever the stats file holds.
    """
    try:
        data = base64.b64decode(str(encoded), validate=True)
    except (binascii.Error, ValueError):
        return None
    if data.startswith(b"\xff\xd8"):
        mime = "image/jpeg"
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    else:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _summary_section(summary):
    counts = summary["counts"]
    read = counts.get("read") or 0
    cards = [("kept", counts.get("kept")), ("written", counts.get("written")), ("labeled", counts.get("labeled")),
             ("rejected", counts.get("rejected")), ("classes", summary["num_classes"])]
    parts = ['<div class="cards">'] + [f'<div class="card"><b>{_number(value)}</b><span>{label}</span></div>'
                                         for label, value in cards] + ["</div>"]
    rows = [("read", "read", 0), ("rejected", "rejected", 1), ("labeled", "labeled", 1),
            ("below threshold", "below_threshold", 2), ("over class cap", "over_cap", 2), ("kept", "kept", 2),
            ("unavailable at selection", "unavailable", 2),
            ("duplicates added for balance", "duplicates", 0), ("written", "written", 0)]
    parts.append('<div class="grid"><div><h3>Accounting</h3><table><thead><tr><th class="text">stage</th>'
                 "<th>images</th><th>of read</th><th></th></tr></thead><tbody>")
    for label, key, depth in rows:
        value = counts.get(key)
        share = value / read if read and value is not None else None
        bar = f'<span class="bar" style="width:{share * 160:.0f}px"></span>' if share is not None else ""
        parts.append(f'<tr><td class="text" style="padding-left:{10 + 18 * depth}px">{label}</td>'
                     f"<td>{_number(value)}</td><td>{_number(share, percent=True)}</td>"
                     f'<td class="text">{bar}</td></tr>')
    parts.append("</tbody></table><h3>Rejected by reason</h3><table><tbody>")
    reasons = sorted(summary["rejected_by_reason"].items(), key=lambda item: -item[1])
    parts += [f'<tr><td class="text">{_escape(reason)}</td><td>{_number(count)}</td></tr>' for reason, count in reasons]
    if not reasons:
        parts.append('<tr><td class="text">none</td></tr>')
    parts.append("</tbody></table></div><div><h3>Teacher</h3><table><tbody>")
    for key, value in sorted(summary["teacher"].items()):
        parts.append(f'<tr><td class="text">{_escape(key)}</td><td class="text"><code>{_escape(value)}</code></td></tr>')
    parts.append("</tbody></table></div></div><h3>Settings</h3><div class=\"settings\">")
    parts += [f"<span>{_escape(key)} <code>{_escape(value)}</code></span>" for key, value in
              sorted(summary["settings"].items())]
    parts.append("</div>")
    return "".join(parts)


def _distribution_section(summary):
    minimum = summary["settings"].get("min_confidence")
    confidence = svg.histogram(summary["confidence_histogram"], "Confidence of all labeled images",
                                      "confidence (max probability)", minimum,
                                      f"min_confidence {minimum}" if minimum is not None else "")
    entropy = svg.histogram(summary["entropy_histogram"], "Entropy of all labeled images",
                                   "entropy (nats)")
    sweep = summary["threshold_sweep"]
    labeled = sum(summary["confidence_histogram"]["counts"])
    chart = svg.line_chart(
        [{"name": "above threshold", "color": svg.BLUE,
          "points": [(row["min_confidence"], row["above_threshold"]) for row in sweep]},
         {"name": "estimated kept under class cap", "color": svg.ORANGE,
          "points": [(row["min_confidence"], row["estimated_kept"]) for row in sweep]}],
        "Images kept by min_confidence", "min_confidence", "images", marker=minimum,
        marker_label="current" if minimum is not None else "")
    rows = []
    for row in sweep:
        css = ' class="current"' if row["current"] else ""
        rows.append(f"<tr{css}>{_cell(row['min_confidence'], 2)}{_cell(row['above_threshold'])}"
                    f"{_cell(row['fraction_of_labeled'], percent=True)}{_cell(row['estimated_kept'])}</tr>")
    table = ('<table><thead><tr><th>min_confidence</th><th>above threshold</th><th>of labeled</th>'
             f"<th>est. kept (cap)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return (f"<h2>Confidence and entropy</h2><div class=\"grid\"><div>{confidence}</div><div>{entropy}</div></div>"
            f"<h2>Threshold sweep</h2><p class=\"sub\">How many of the {labeled:,} labeled images each "
            "min_confidence keeps, exact at the 0.01 bins of the confidence histogram; the class-cap estimate "
            "interpolates each class's confidence deciles.</p>"
            f'<div class="grid"><div>{chart}</div><div>{table}</div></div>')


def _holdout_section(holdout):
    cards = [("holdout images", _number(holdout["evaluated"])), ("top-1 accuracy", _number(holdout["accuracy"], percent=True)),
             (f"top-{holdout['top_k']} accuracy", _number(holdout["top_k_accuracy"], percent=True)),
             (f"ECE ({len(holdout['reliability'])} bins)", _number(holdout["expected_calibration_error"]))]
    sweep = holdout["sweep"]
    # Zoom to the band the curves use: accuracy differences of a few points decide the threshold.
    lowest = min([row[key] for row in sweep for key in ("accuracy", "kept_fraction") if row[key] is not None] + [1.0])
    chart = svg.line_chart(
        [{"name": "accuracy of kept", "color": svg.BLUE,
          "points": [(row["min_confidence"], row["accuracy"]) for row in sweep]},
         {"name": "kept fraction", "color": svg.ORANGE,
          "points": [(row["min_confidence"], row["kept_fraction"]) for row in sweep]}],
        "Holdout accuracy versus kept fraction", "min_confidence", "fraction",
        y_range=(min(max(int(lowest * 10) / 10, 0.0), 0.9), 1.0),
        marker=holdout.get("current_min_confidence"), marker_label="current")
    rows = []
    for row in sweep:
        css = ' class="current"' if row.get("current") else ""
        rows.append(f"<tr{css}>{_cell(row['min_confidence'], 2)}{_cell(row['kept'])}"
                    f"{_cell(row['kept_fraction'], percent=True)}{_cell(row['accuracy'], percent=True)}</tr>")
    skipped = holdout.get("skipped") or 0
    note = (f" {skipped:,} images of classes the teacher does not have were skipped." if skipped else "")
    return (f"<h2>Holdout calibration</h2><p class=\"sub\">Teacher run on <code>{_escape(holdout['source'])}</code> "
            f"at temperature {_escape(holdout['temperature'])}.{note}</p><div class=\"cards\">"
            + "".join(f'<div class="card"><b>{value}</b><span>{html.escape(label)}</span></div>' for label, value in cards)
            + f'</div><div class="grid"><div>{svg.reliability_diagram(holdout["reliability"])}</div>'
            f"<div>{chart}</div></div><table><thead><tr><th>min_confidence</th><th>kept</th><th>kept fraction</th>"
            f"<th>accuracy of kept</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _class_section(summary, max_chart_classes):
    rows = summary["per_class"]
    chart = svg.class_chart(rows[:max_chart_classes])
    columns = [("class", "number"), ("name", "text"), ("labeled", "number"), ("above threshold", "number"),
               ("kept", "number"), ("duplicates", "number"), ("written", "number"), ("duplication x", "number"),
               ("mean conf.", "number"), ("p10", "number"), ("p50", "number"), ("p90", "number")]
    with_holdout = bool(summary.get("holdout"))
    if with_holdout:
        columns += [("holdout images", "number"), ("holdout acc.", "number")]
    body = []
    for row in rows:
        quantiles = row.get("confidence_quantiles") or []
        deciles = [quantiles[index] if len(quantiles) == 11 else None for index in (1, 5, 9)]
        body.append("<tr>" + _cell(row["class"]) + _cell(row["name"], text=True, css="text name")
                    + "".join(_cell(row.get(key)) for key in ("labeled", "above_threshold", "kept", "duplicates", "written"))
                    + _cell(row["duplication_factor"], 2) + _cell(row.get("mean_confidence"))
                    + "".join(_cell(value) for value in deciles)
                    + (_cell(row.get("holdout_images")) + _cell(row.get("holdout_accuracy"), percent=True)
                       if with_holdout else "") + "</tr>")
    shown = min(len(rows), max_chart_classes)
    return (f"<h2>Classes</h2><p class=\"sub\">Worst first: classes no image was labeled as, then lowest mean "
            f"confidence, then fewest kept. The chart shows the worst {shown} of {len(rows)}; click a column "
            f"header to sort the table. Duplication x = written / kept.</p>{chart}"
            f'<div class="scroll"><table class="sortable" id="classes">{_header(columns)}'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _figures(examples):
    figures = []
    for example in examples:
        uri = thumbnail_uri(example.get("thumbnail", ""))
        image = f'<img src="{html.escape(uri)}" alt="">' if uri else '<img alt="no thumbnail">'
        confidence = example.get("confidence")
        figures.append(f'<figure title="{_escape(example.get("uri"))}">{image}'
                       f"{_number(confidence) if isinstance(confidence, (int, float)) else '-'}</figure>")
    return "".join(figures) or '<span class="sub">none</span>'


def _examples_section(summary, examples, thumbnail_classes):
    parts = []
    for row in summary["per_class"]:
        if len(parts) >= thumbnail_classes:
            break
        found = examples.get(str(row["class"]))
        if not found:
            continue
        parts.append(f"<h3>{_escape(row['class'])}: {_escape(row['name'])}</h3><div class=\"examples\">"
                     f"<div><div class=\"sub\">most confident</div>{_figures(found.get('most_confident') or [])}</div>"
                     f"<div><div class=\"sub\">least confident</div>{_figures(found.get('least_confident') or [])}</div>"
                     "</div>")
    return (f"<h2>Examples</h2><p class=\"sub\">Most and least confident images of the worst {len(parts)} classes "
            "that have any, from the job's bounded per-class sample; hover for the source URI.</p>" + "".join(parts))


def render(summary, examples, max_chart_classes=40, thumbnail_classes=24):
    """The report's HTML text for a `pipeline.report.summary.summarize` dict and stats.json's examples."""
    script_hash = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    teacher = summary["teacher"]
    subtitle = " \u00b7 ".join(part for part in [
        f"run {_escape(summary['run_id'])}" if summary.get("run_id") else "",
        f"teacher {_escape(teacher.get('teacher_id'))} ({_escape(teacher.get('model_name'))})" if teacher else "",
        f"input <code>{_escape(summary['input'])}</code>" if summary.get("input") else "",
        f"output <code>{_escape(summary['labels'])}</code>"] if part)
    # A random teacher's labels are noise: said first, in a banner no one scrolls past.
    banner = (f'<div class="banner" role="alert">WARNING: {_escape(RANDOM_TEACHER_WARNING)}</div>'
              if summary.get("random_teacher") else "")
    warnings = banner + "".join(f'<div class="warning">{_escape(warning)}</div>' for warning in summary["warnings"]
                                if warning != RANDOM_TEACHER_WARNING)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sections = [_summary_section(summary), _distribution_section(summary)]
    if summary.get("holdout"):
        sections.append(_holdout_section(summary["holdout"]))
    sections += [_class_section(summary, max_chart_classes), _examples_section(summary, examples, thumbnail_classes)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Label confidence report</title><style>{STYLE}</style></head><body>"
            f"<h1>Label confidence report</h1><p class=\"sub\">{subtitle}</p>{warnings}{''.join(sections)}"
            f"<p class=\"sub\">Generated {created} by <code>python -m pipeline.report</code>.</p>"
            f"<script>{SORT_SCRIPT}</script></body></html>\n")
