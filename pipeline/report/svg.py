"""Inline SVG charts for the confidence report.

Hand-written rather than matplotlib: the report must open with no network and no plotting
stack on the reader's side, and a few hundred bytes of SVG per chart keep a 1000-class
report small. Every text that can come from data passes through `html.escape`.
"""

import html
import math

BLUE, ORANGE, GREY, RED, INK = "#3467b0", "#e0892c", "#c9d1dc", "#c23b3b", "#333"
WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 40, 42


def _text(x, y, content, anchor="middle", size=11, extra="", color=INK):
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{color}"{extra}>'
            f"{html.escape(str(content))}</text>")


def _svg(width, height, title, body):
    return (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{html.escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif">'
            f"<title>{html.escape(title)}</title>{''.join(body)}</svg>")


def _nice_maximum(value):
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above `value`, so axis ticks are round numbers."""
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _tick_label(value):
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}" if value == int(value) else f"{value:.2f}".rstrip("0")


class _Axes:
    """Maps data coordinates to a plot area and draws its axes, ticks and labels."""

    def __init__(self, x_range, y_range, x_label, y_label, width=WIDTH, height=HEIGHT, log_y=False):
        self.x_range, self.y_range = x_range, y_range  # with log_y, y_range is in decades (log10)
        self.width, self.height = width, height
        self.x_label, self.y_label = x_label, y_label
        self.log_y = log_y

    def x(self, value):
        low, high = self.x_range
        return LEFT + (value - low) / ((high - low) or 1) * (self.width - LEFT - RIGHT)

    def y(self, value):
        low, high = self.y_range
        if self.log_y:
            value = math.log10(value) if value > 0 else low
        return self.height - BOTTOM - (value - low) / ((high - low) or 1) * (self.height - TOP - BOTTOM)

    def draw(self, x_ticks=5, integer_y=False):
        # Image counts get whole-number ticks: 5 images over 4 ticks would read "1.25 images".
        top = self.y_range[1] - self.y_range[0]
        y_ticks = next((count for count in (5, 4, 2) if not integer_y or float(top / count).is_integer()), 1)
        if self.log_y:
            tick_values = [10 ** decade for decade in range(0, int(self.y_range[1]) + 1)]
        else:
            tick_values = [self.y_range[0] + top * step / y_ticks for step in range(y_ticks + 1)]
        parts = []
        for value in tick_values:
            y = self.y(value)
            parts.append(f'<line x1="{LEFT}" x2="{self.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(_text(LEFT - 6, y + 4, _tick_label(value), anchor="end", size=10))
        for step in range(x_ticks + 1):
            value = self.x_range[0] + (self.x_range[1] - self.x_range[0]) * step / x_ticks
            parts.append(_text(self.x(value), self.height - BOTTOM + 14, _tick_label(round(value, 4)), size=10))
        bottom = self.height - BOTTOM
        parts.append(f'<line x1="{LEFT}" x2="{self.width - RIGHT}" y1="{bottom}" y2="{bottom}" stroke="{INK}"/>')
        parts.append(_text((LEFT + self.width - RIGHT) / 2, self.height - 8, self.x_label))
        parts.append(_text(14, (TOP + bottom) / 2, self.y_label,
                           extra=f' transform="rotate(-90 14 {(TOP + bottom) / 2:.1f})"'))
        return parts


def _marker(axes, value, label):
    x = axes.x(value)
    return [f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP - 6}" y2="{axes.height - BOTTOM}" stroke="{RED}" '
            f'stroke-dasharray="4 3"/>', _text(x + 4, TOP - 10, label, anchor="start", size=10, color=RED)]


def histogram(histogram_data, title, x_label, marker=None, marker_label=""):
    """Bars of `histogram_data` ({"edges", "counts"}); an optional dashed line at x = `marker`."""
    edges, counts = histogram_data["edges"], histogram_data["counts"]
    filled = sorted(count for count in counts if count)
    # A confident teacher piles most images into the last bins; on a linear axis the tail a
    # threshold decides about would vanish, so a skewed histogram gets a log axis.
    if filled and filled[-1] >= 50 * filled[len(filled) // 2]:
        top_decade = math.ceil(math.log10(filled[-1]))
        axes = _Axes((edges[0], edges[-1]), (-0.3, top_decade), x_label, "images (log scale)", log_y=True)
    else:
        axes = _Axes((edges[0], edges[-1]), (0, _nice_maximum(filled[-1] if filled else 0)), x_label, "images")
    body = axes.draw(integer_y=True)
    for lower, upper, count in zip(edges, edges[1:], counts):
        if not count:
            continue
        x, y = axes.x(lower), axes.y(count)
        bar_width = max(axes.x(upper) - x - 0.5, 0.8)
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_width:.1f}" height="{axes.y(0) - y:.1f}" '
                    f'fill="{BLUE}"><title>{lower:.3g}-{upper:.3g}: {count:,}</title></rect>')
    if marker is not None:
        body += _marker(axes, marker, marker_label)
    return _svg(WIDTH, HEIGHT, title, body)


def line_chart(series, title, x_label, y_label, x_range=(0.0, 1.0), y_range=None, marker=None,
               marker_label="", diagonal=False):
    """Lines of `series` ([{"name", "color", "points": [(x, y), ...]}]) with a legend."""
    if y_range is None:
        top = max((y for line in series for _, y in line["points"] if y is not None), default=0)
        y_range = (0, _nice_maximum(top))
    axes = _Axes(x_range, y_range, x_label, y_label)
    body = axes.draw(integer_y=y_label == "images")
    if diagonal:
        body.append(f'<line x1="{axes.x(0):.1f}" y1="{axes.y(0):.1f}" x2="{axes.x(1):.1f}" y2="{axes.y(1):.1f}" '
                    f'stroke="{GREY}" stroke-dasharray="3 3"/>')
    for index, line in enumerate(series):
        points = [(axes.x(x), axes.y(y)) for x, y in line["points"] if y is not None]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{line["color"]}" stroke-width="2"/>')
            body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{line["color"]}"/>' for x, y in points]
        # The legend sits in the top margin, in one row, where no line can run through it.
        legend_x = LEFT + 200 * index
        body.append(f'<rect x="{legend_x}" y="6" width="10" height="10" fill="{line["color"]}"/>')
        body.append(_text(legend_x + 14, 15, line["name"], anchor="start", size=10))
    if marker is not None:
        body += _marker(axes, marker, marker_label)
    return _svg(WIDTH, HEIGHT, title, body)


def reliability_diagram(bins, title="Reliability diagram"):
    """Accuracy per confidence bin against the diagonal; the gap to it is the miscalibration."""
    axes = _Axes((0.0, 1.0), (0.0, 1.0), "confidence (max probability)", "accuracy")
    body = axes.draw()
    body.append(f'<line x1="{axes.x(0):.1f}" y1="{axes.y(0):.1f}" x2="{axes.x(1):.1f}" y2="{axes.y(1):.1f}" '
                f'stroke="{GREY}" stroke-dasharray="3 3"/>')
    for item in bins:
        if not item["count"]:
            continue
        x, width = axes.x(item["lower"]), axes.x(item["upper"]) - axes.x(item["lower"]) - 1
        accuracy_y, confidence_y = axes.y(item["accuracy"]), axes.y(item["confidence"])
        tooltip = (f"{item['lower']:.2f}-{item['upper']:.2f}: {item['count']:,} images, accuracy "
                   f"{item['accuracy']:.3f}, mean confidence {item['confidence']:.3f}")
        body.append(f'<rect x="{x:.1f}" y="{accuracy_y:.1f}" width="{width:.1f}" '
                    f'height="{axes.y(0) - accuracy_y:.1f}" fill="{BLUE}"><title>{html.escape(tooltip)}</title></rect>')
        gap_top, gap_bottom = min(accuracy_y, confidence_y), max(accuracy_y, confidence_y)
        body.append(f'<rect x="{x:.1f}" y="{gap_top:.1f}" width="{width:.1f}" height="{gap_bottom - gap_top:.1f}" '
                    f'fill="{RED}" fill-opacity="0.3"/>')
        # How many images a bin holds says how much to trust its bar.
        body.append(_text(x + width / 2, gap_top - 3, f"{item['count']:,}", size=9))
    body.append(f'<rect x="{LEFT}" y="6" width="10" height="10" fill="{BLUE}"/>')
    body.append(_text(LEFT + 14, 15, "accuracy (number: images in the bin)", anchor="start", size=10))
    body.append(f'<rect x="{LEFT + 240}" y="6" width="10" height="10" fill="{RED}" fill-opacity="0.3"/>')
    body.append(_text(LEFT + 254, 15, "gap to mean confidence", anchor="start", size=10))
    return _svg(WIDTH, HEIGHT, title, body)


def class_chart(rows, title="Per-class counts and confidence"):
    """One line per class: labeled / kept / duplicate bars, and mean confidence with its 10-90% range."""
    row_height, label_width, counts_width, gap, confidence_width = 20, 230, 420, 32, 300
    width = label_width + counts_width + gap + confidence_width + RIGHT
    height = TOP + row_height * len(rows) + 34
    largest = max([max(row.get("labeled") or 0, row.get("written") or 0) for row in rows] + [1])
    confidence_left = label_width + counts_width + gap

    def count_x(value):
        return label_width + value / largest * counts_width

    def confidence_x(value):
        return confidence_left + value * confidence_width

    body = [_text(confidence_left, TOP - 10, "mean confidence (10-90% range)", anchor="start", size=10)]
    for index, (name, color) in enumerate([("labeled", GREY), ("kept", BLUE), ("duplicates", ORANGE)]):
        body.append(f'<rect x="{label_width + 90 * index}" y="{TOP - 19}" width="10" height="10" fill="{color}"/>')
        body.append(_text(label_width + 90 * index + 14, TOP - 10, name, anchor="start", size=10))
    for index, row in enumerate(rows):
        y = TOP + index * row_height
        label = f"{row['class']}: {row['name']}"
        labeled, kept, written = row.get("labeled") or 0, row.get("kept") or 0, row.get("written") or 0
        parts = [f"<title>{html.escape(label)}: labeled {labeled:,}, kept {kept:,}, written {written:,}</title>",
                 _text(label_width - 6, y + 14, label if len(label) <= 32 else label[:31] + "\u2026",
                       anchor="end", size=12)]
        for start, end, color in [(0, labeled, GREY), (0, kept, BLUE), (kept, max(written, kept), ORANGE)]:
            if end > start:
                parts.append(f'<rect x="{count_x(start):.1f}" y="{y + 3}" width="{count_x(end) - count_x(start):.1f}" '
                             f'height="{row_height - 6}" fill="{color}"/>')
        quantiles, mean = row.get("confidence_quantiles") or [], row.get("mean_confidence")
        middle = y + row_height / 2
        parts.append(f'<line x1="{confidence_x(0):.1f}" x2="{confidence_x(1):.1f}" y1="{middle:.1f}" '
                     f'y2="{middle:.1f}" stroke="#f0f0f0"/>')
        if len(quantiles) == 11:
            parts.append(f'<line x1="{confidence_x(quantiles[1]):.1f}" x2="{confidence_x(quantiles[9]):.1f}" '
                         f'y1="{middle:.1f}" y2="{middle:.1f}" stroke="{BLUE}" stroke-width="3" stroke-opacity="0.4"/>')
        if mean is not None:
            parts.append(f'<circle cx="{confidence_x(mean):.1f}" cy="{middle:.1f}" r="3.5" fill="{BLUE}"/>')
        body.append(f"<g>{''.join(parts)}</g>")
    axis_y = TOP + row_height * len(rows) + 12
    for value in (0, 0.5, 1):
        body.append(_text(confidence_x(value), axis_y, _tick_label(value), size=10))
    body.append(_text(count_x(largest), axis_y, f"{largest:,}", anchor="end", size=10))
    body.append(_text(label_width, axis_y, "0", anchor="start", size=10))
    return _svg(width, height, title, body)
