"""The exceptions and warning of the export package, in one module every other part can import."""


class ExportError(RuntimeError):
    """An export could not be completed or checked (nothing was committed)."""


class ParityWarning(UserWarning):
    """A reduced-precision TFLite file is outside its parity bound (it was kept and flagged)."""


class VerificationError(ValueError):
    """`verify(..., strict=True)` found problems; the message lists them."""
