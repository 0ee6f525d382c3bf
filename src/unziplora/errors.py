"""The one error type users see: a single line naming the problem and the fix."""


class UnZipLoRAError(Exception):
    """Bad input or a failed precondition; the CLI prints it as one line and exits non-zero."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the checkpoint is and how to resume."""
