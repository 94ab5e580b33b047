"""A statement as a PDF (fpdf2): the same line items as the CSV and JSON, amounts as exact decimals."""

from __future__ import annotations

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from ledger.money import micros_to_decimal
from projections.statements import Statement

_columns = (("Model", 52), ("Version", 22), ("Unit", 36), ("Quantity", 26), ("Rate / M", 24), ("Amount", 30))


def _credits(micros: int) -> str:
    return f"{micros_to_decimal(micros)}"


def statement_pdf(statement: Statement, organization: str) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_title(f"Statement {statement.org_id}")
    pdf.set_author("Tollgate")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "Statement", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 10)
    start, end = statement.start.isoformat()[:19], statement.end.isoformat()[:19]
    for text in (
        f"Organization: {organization} ({statement.org_id})",
        f"Period: {start} to {end} UTC (end excluded)",
        "Amounts in credits (1 credit = 1 USD); rates in credits per million units.",
    ):
        pdf.cell(0, 6, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 9)
    for title, width in _columns:
        pdf.cell(width, 7, title, border="B", align="R" if title in ("Quantity", "Rate / M", "Amount") else "L")
    pdf.ln()
    pdf.set_font("Helvetica", "", 9)
    for line in statement.lines:
        cells = (
            line.model or "-",
            line.price_version or "-",
            line.unit,
            f"{line.quantity:,}",
            _credits(line.unit_price_micros_per_million) if line.unit_price_micros_per_million else "",
            _credits(line.amount_micros),
        )
        for (title, width), text in zip(_columns, cells, strict=True):
            pdf.cell(width, 6, text[:40], align="R" if title in ("Quantity", "Rate / M", "Amount") else "L")
        pdf.ln()
    pdf.set_font("Helvetica", "B", 10)
    pdf.ln(2)
    for label, micros in (
        ("Charges", statement.charges_micros),
        ("Refunds", -statement.refunds_micros),
        ("Total", statement.total_micros),
    ):
        pdf.cell(sum(w for _, w in _columns[:-1]), 7, label, align="R")
        pdf.cell(_columns[-1][1], 7, _credits(micros), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 8)
    pdf.ln(4)
    check = "match" if statement.balanced else "do not match yet (the projector may be behind)"
    pdf.multi_cell(0, 5, f"The ledger's postings for the period ({_credits(statement.ledger_charges_micros)}) {check}.")
    return bytes(pdf.output())
