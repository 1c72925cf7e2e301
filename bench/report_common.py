"""What every section of docs/BENCHMARKS.md formats the same way: markdown
tables, target verdicts, 'median (min–max)' cells and the horizontal bar
plot of medians with min–max whiskers. Used by report.py and its section
modules (report_load, report_distributed, report_codec)."""


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def verdict(met):
    return "**met**" if met else "**missed**"


def pct(x, digits=1):
    return f"{x * 100:.{digits}f} %"


def mm(stat, scale=1e3, fmt="{:.1f}"):
    """'median (min–max)' of a {median,min,max} dict (default: seconds shown as ms)."""
    return f"{fmt.format(stat['median'] * scale)} ({fmt.format(stat['min'] * scale)}–{fmt.format(stat['max'] * scale)})"


def median_bars(ax, stats, labels, colors, xlabel, title, scale=1.0, log=True, fontsize=7):
    """One horizontal bar per {median,min,max} stat, top to bottom, whiskers min–max."""
    ys = [s["median"] * scale for s in stats]
    lo = [(s["median"] - s["min"]) * scale for s in stats]
    hi = [(s["max"] - s["median"]) * scale for s in stats]
    ax.barh(range(len(stats)), ys, xerr=[lo, hi], color=colors, capsize=2)
    ax.set_yticks(range(len(stats)))
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
