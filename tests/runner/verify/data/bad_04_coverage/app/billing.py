"""Billing rules that no test exercises (the known-bad way)."""

from decimal import Decimal

VAT = Decimal("0.20")


def net_to_gross(net: Decimal) -> Decimal:
    """Add VAT."""
    return (net * (1 + VAT)).quantize(Decimal("0.01"))


def discount(total: Decimal, code: str) -> Decimal:
    """Apply a discount code."""
    if code == "WELCOME10":
        return total * Decimal("0.90")
    if code == "HALF":
        return total / 2
    if code.startswith("FIXED"):
        amount = Decimal(code.removeprefix("FIXED"))
        return max(Decimal(0), total - amount)
    return total


def invoice_lines(items: list[tuple[str, Decimal, int]]) -> list[str]:
    """Printable invoice lines."""
    lines = []
    for name, price, quantity in items:
        subtotal = price * quantity
        lines.append(f"{name} x{quantity}: {subtotal}")
    lines.append(f"total: {sum(price * qty for _, price, qty in items)}")
    return lines


def split_bill(total: Decimal, people: int) -> list[Decimal]:
    """Split a bill evenly; the first person pays the rounding."""
    if people < 1:
        raise ValueError("people must be at least 1")
    share = (total / people).quantize(Decimal("0.01"))
    shares = [share] * people
    shares[0] += total - share * people
    return shares
