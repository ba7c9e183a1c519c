"""An upstream-style streaming client: Python's ssl with its default
verification (the job certificate as the only trust anchor, and the host
dialled checked against it), an RSA client certificate, and no X-Horde-*
headers. It prints what it got as one JSON object.

usage: upstream_client.py HOST PORT JOB_CERT CLIENT_CERT CLIENT_KEY STRICT TARGET BODY
"""
import base64
import http.client
import json
import ssl
import sys

host, port, job_cert, client_cert, client_key, strict, target, body = sys.argv[1:9]
ctx = ssl.create_default_context(cafile=job_cert)
if strict == "strict":
    # Python 3.13's defaults.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
ctx.load_cert_chain(client_cert, client_key)
conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
conn.request("POST", target, body=body.encode(), headers={"Content-Type": "application/json"})
resp = conn.getresponse()
data = resp.read()
print(json.dumps({
    "status": resp.status,
    "request_id": resp.getheader("X-Horde-Request-Id"),
    "content_type": resp.getheader("Content-Type"),
    "body_b64": base64.b64encode(data).decode(),
}))
