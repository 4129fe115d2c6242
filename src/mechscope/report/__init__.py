"""Reports: the inspect job and its HTML rendering."""

from mechscope.report.html import write_report
from mechscope.report.inspection import Inspection, inspect_prompt

__all__ = ["Inspection", "inspect_prompt", "write_report"]
