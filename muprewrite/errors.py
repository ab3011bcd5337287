"""Errors the user can act on: each message names the problem and the fix in one line."""


class MuRewriteError(Exception):
    """Bad input or an unsupported model; the CLI prints it as one line and exits non-zero."""


class CaptureError(MuRewriteError):
    """The model could not be captured as a graph at one of the widths."""


class StubError(CaptureError):
    """A repeated block's copy cannot be passed through, or is not a copy of its representative: the
    block is analysed apart (passes/passthrough.py; the pipeline's fallback)."""


class WidthError(MuRewriteError):
    """The widths do not define a consistent set of infinite dimensions."""


class VerificationError(MuRewriteError):
    """The realized model disagrees with the edited graph: the rewrite is not trustworthy."""


class WidthPredictionError(MuRewriteError):
    """A size or constant at a width that was not captured cannot be predicted from the captures."""
