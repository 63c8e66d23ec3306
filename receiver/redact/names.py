"""What is masked by default (docs/privacy.md lists the same; ``[engine] redact_headers`` and
``redact_params`` add names). Names are compared case-insensitively."""

from __future__ import annotations

# HTTP headers whose values are credentials. Authorization and Proxy-Authorization keep their
# scheme (``Bearer``, ``Basic``, ...); Cookie keeps each cookie's name, Set-Cookie the cookie's
# name and its attributes; the others are masked whole.
HEADERS: tuple[str, ...] = (
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "X-Api-Key",
    "Api-Key",
    "X-Auth-Token",
    "X-Access-Token",
    "X-Amz-Security-Token",
    "X-aws-ec2-metadata-token",
    "X-Goog-Api-Key",
    "X-Vault-Token",
    "X-Consul-Token",
    "X-Csrf-Token",
    "X-Xsrf-Token",
    "Private-Token",
    "Ocp-Apim-Subscription-Key",
    "X-Functions-Key",
)

# URI query (and form body) parameters whose values are credentials.
PARAMS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "auth_token",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "jsessionid",
    "phpsessid",
)

# SASL mechanisms (RFC 4422 and the registry): ``AUTH <mechanism> [initial response]`` in SMTP
# and POP3, ``tag AUTHENTICATE <mechanism>`` in IMAP. Any other first argument of AUTH is a
# password (Redis: ``AUTH [user] password``).
SASL_MECHANISMS = frozenset(
    b"plain login cram-md5 digest-md5 xoauth xoauth2 oauthbearer gssapi ntlm external anonymous "
    b"kerberos_v4 kerberos_v5 srp otp skey".split()
)
SASL_PREFIXES = (b"scram-", b"gs2-")

# How many lines after ``AUTH <mechanism>`` are the client's SASL responses (base64): LOGIN sends
# the user name and the password, one each (one fewer when the first is on the AUTH line),
# single-step mechanisms one line unless it was on the AUTH line; the others (SCRAM, ...) two.
SASL_LINES = {b"login": 2, b"plain": 1, b"xoauth2": 1, b"oauthbearer": 1, b"external": 1, b"anonymous": 1,
              b"cram-md5": 1}  # fmt: skip
SASL_LINES_OTHER = 2
