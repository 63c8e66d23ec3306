"""Classifying AWS rejections of CreateTrafficMirrorSession.

Codes from the EC2 API's error-code list. Three outcomes:

* ``NEXT_TARGET``: this target cannot take the source (full, or gone): try the next one.
* ``PERMANENT``: retrying cannot fix it (the source does not support mirroring, the ENI already
  has 3 sessions, the ENI or the filter is gone): skip the source, log once, count the reason.
* anything else (throttling past botocore's retries, 5xx, access denied) propagates: the
  invocation fails, EventBridge/Lambda retry it and finally dead-letter it.
"""

from __future__ import annotations

from typing import Literal

from botocore.exceptions import ClientError

Kind = Literal["next_target", "permanent", "other"]

NEXT_TARGET: dict[str, str] = {
    "TrafficMirrorSourcesPerTargetLimitExceeded": "target_full",
    "TrafficMirrorSessionsPerTargetLimitExceeded": "target_full",
    "InvalidTrafficMirrorTargetId.NotFound": "target_missing",
}
PERMANENT: dict[str, str] = {
    "TrafficMirrorSessionsPerInterfaceLimitExceeded": "eni_session_limit",
    "InvalidNetworkInterfaceID.NotFound": "eni_gone",
    "InvalidNetworkInterfaceId.NotFound": "eni_gone",
    "InvalidTrafficMirrorFilterId.NotFound": "filter_missing",
    "UnsupportedOperation": "source_unsupported",
}
# Parameter errors whose message says the source cannot be mirrored (seen on some Fargate hosts
# and on non-Nitro instance types).
_UNSUPPORTED_CODES = {"InvalidParameterValue", "InvalidParameter", "InvalidNetworkInterface.Unsupported"}
_UNSUPPORTED_WORDS = ("not supported", "unsupported", "does not support", "cannot be used as a source")


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def classify(err: ClientError) -> tuple[Kind, str]:
    code = error_code(err)
    if code in NEXT_TARGET:
        return "next_target", NEXT_TARGET[code]
    if code in PERMANENT:
        return "permanent", PERMANENT[code]
    msg = str(err.response.get("Error", {}).get("Message", "")).lower()
    if code in _UNSUPPORTED_CODES and any(w in msg for w in _UNSUPPORTED_WORDS):
        return "permanent", "source_unsupported"
    return "other", code or "unknown"


def is_not_found(err: ClientError) -> bool:
    return error_code(err).endswith(".NotFound")
