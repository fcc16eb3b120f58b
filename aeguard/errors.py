"""One error hierarchy: each error knows its CLI exit code and its HTTP status."""


class AeguardError(Exception):
    """Base of every error aeguard reports to a user."""

    exit_code = 1
    http_status = 500


class UsageError(AeguardError):
    """A bad option value or argument."""

    exit_code = 2
    http_status = 400


class DataNotFoundError(AeguardError):
    """A data set or input path is missing."""

    exit_code = 3
    http_status = 404


class DataFormatError(AeguardError):
    """A data file exists but is not what it claims to be (bad IDX header, truncated, wrong checksum)."""

    exit_code = 3
    http_status = 422


class ImageError(AeguardError):
    """One image could not be read or converted; batch jobs record it and go on."""

    exit_code = 3
    http_status = 400


class ImageTooLargeError(ImageError):
    """An image over the configured pixel limit (a decompression-bomb guard)."""

    http_status = 413


class SetupError(AeguardError):
    """The environment cannot run the job: worker processes that do not start, a missing system library."""

    exit_code = 1
    http_status = 500


class OutputError(AeguardError):
    """The results cannot be written: a full disk, a file-size limit, a folder or read-only path as output."""

    exit_code = 7
    http_status = 500


class BundleError(AeguardError):
    """A model bundle is missing, unreadable, tampered with or of an unknown schema."""

    exit_code = 4
    http_status = 503


class ParityError(AeguardError):
    """torch and onnxruntime disagree on the exported graph; the bundle is not written."""

    exit_code = 5
    http_status = 500


class TrainingCollapsedError(AeguardError):
    """Training ended with a model that gives every image the same reconstruction; no bundle is written."""

    exit_code = 6
    http_status = 500


class RequestError(AeguardError):
    """A daemon request that cannot be served as sent: bad JSON, bad base64, wrong shape or type."""

    exit_code = 2
    http_status = 400


class PayloadTooLargeError(RequestError):
    """A body, image count or image size over the daemon's configured limits."""

    http_status = 413


class BodyTimeoutError(RequestError):
    """A request body that did not all arrive within the request timeout."""

    http_status = 408


class UnauthorizedError(RequestError):
    """A missing or wrong bearer token."""

    http_status = 401


class ModelNotFoundError(RequestError):
    """A request named a model this daemon does not serve."""

    http_status = 404


class ModelOutputError(AeguardError):
    """The model gave a score that cannot be judged (NaN or infinity) for a valid input."""

    exit_code = 4
    http_status = 422


class NotReadyError(AeguardError):
    """No model is loaded yet, or the daemon is draining."""

    http_status = 503


class RequestTimeoutError(AeguardError):
    """Scoring did not finish within the request timeout."""

    http_status = 504
