"""The walk-through ``dicomweb-server serve`` prints once the server is ready (README, "Two
commands"): a token, STOW-RS, QIDO-RS and WADO-RS with curl and dicomweb-client, then the order
workflow (commit, claim as the analysis service, complete, the report).  Bash to paste as printed.
"""

from __future__ import annotations

import sys

from dicomweb_server.access import admin
from dicomweb_server.dicom import resources
from dicomweb_server.settings import Settings


def text(base: str, dev: admin.DevClient | None, settings: Settings) -> str:
    """A walk-through to paste into bash as printed: a token, then store, search and fetch a file.

    Prose lines are comments and commands start in the first column (a heredoc's ``PY`` must),
    so the whole text, pasted or piped into ``bash``, runs; curl fails on an HTTP error.
    """
    import pydicom
    from pydicom.data import get_testdata_file

    path = str(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    url = base + resources.path(*uids)
    if dev:
        who = (
            f"# Development tenant '{admin.DEV_TENANT}', client '{dev.client_id}' (every scope); "
            f"its secret is in {admin.dev_secret_path(settings)}"
        )
        credentials = f"{dev.client_id}:{dev.client_secret}"
        py_auth = f'("{dev.client_id}", "{dev.client_secret}")'
    else:
        who = (
            "# Create a client (`dicomweb-server clients create --tenant T --scopes ...`), then\n"
            "# export CLIENT_ID=... CLIENT_SECRET=... with its id and secret."
        )
        credentials = "$CLIENT_ID:$CLIENT_SECRET"
        py_auth = '(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"])'
    py = sys.executable
    # -f: an HTTP error fails the command (curl older than 7.76 has no --fail-with-body)
    curl = 'curl -fsS -w "\\n" -H "Authorization: Bearer $TOKEN"'
    return f"""# DICOMweb server ready at {base}/dicomweb (health: {base}/healthz, {base}/readyz)
{who}
# Paste these lines into another terminal: a token (OAuth2 client credentials), then store a
# file, search, and fetch it back.
TOKEN=$(curl -fsS -u "{credentials}" -d grant_type=client_credentials \\
  {base}/oauth/token | {py} -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
{curl} -X POST {base}/dicomweb/studies \\
  -H 'Content-Type: application/dicom' --data-binary @{path}
{curl} '{base}/dicomweb/studies?PatientID={ds.PatientID}'
{curl} -H 'Accept: application/dicom; transfer-syntax=*' -o back.dcm \\
  {url}
{curl} {url}/metadata
{curl} {url}/rendered -o image.jpg
# The same with dicomweb-client (pip install dicomweb-client):
{py} - <<'PY'
import os, pydicom, requests
from dicomweb_client.api import DICOMwebClient
token = requests.post("{base}/oauth/token", data={{"grant_type": "client_credentials"}},
                      auth={py_auth}).json()["access_token"]
client = DICOMwebClient(url="{base}/dicomweb", headers={{"Authorization": "Bearer " + token}})
ds = pydicom.dcmread("{path}")
print(client.store_instances(datasets=[ds]))
back = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
print("round trip ok:", back.PixelData == ds.PixelData)
print(client.search_for_studies(search_filters={{"PatientID": ds.PatientID}}))
PY
""" + _orders_walkthrough(base, dev, py, curl, path)


# The orders part of the walk-through (README, "Orders"), plain text with @NAME@ placeholders (it
# holds Python and shell braces).  A fresh copy of the test file (new UIDs) is stored on each run,
# so pasting it again works: committed, it becomes an order, passes QC, is claimed by the analysis
# client (the job's token reads only the job's study), completed with a generated PDF and JSON,
# delivered as an Encapsulated PDF into the study; then its report is fetched.
_ORDERS = r"""# Orders: store a new study and commit it; claim its analysis job as the analysis service and
# complete it with a generated PDF; fetch the report (PDF, CSV) and find its DICOM copy in the study.
@PY@ - <<'PY'
import pydicom
from pydicom.uid import generate_uid
ds = pydicom.dcmread("@FILE@")
ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
ds.save_as("study.dcm")
open("study.uid", "w").write(ds.StudyInstanceUID)
# A one-page PDF report and a JSON result, as the analysis service would make them.
text = b"BT /F1 18 Tf 72 770 Td (Brain MRI analysis: walk-through, no findings) Tj ET"
objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
           b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
           b" /Resources << /Font << /F1 5 0 R >> >> >>",
           b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
           b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
pdf, offsets = b"%PDF-1.4\n", []
for n, body in enumerate(objects, 1):
    offsets.append(len(pdf))
    pdf += b"%d 0 obj\n%s\nendobj\n" % (n, body)
xref, size = len(pdf), len(objects) + 1
pdf += b"xref\n0 %d\n0000000000 65535 f\r\n" % size + b"".join(b"%010d 00000 n\r\n" % o for o in offsets)
pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
open("report.pdf", "wb").write(pdf)
open("result.json", "w").write('{"findings": [{"structure": "hippocampus", "volume_ml": 3.1}]}')
PY
STUDY=$(cat study.uid)
@CURL@ -o /dev/null -X POST @BASE@/dicomweb/studies \
  -H 'Content-Type: application/dicom' --data-binary @study.dcm
@CURL@ -X POST @BASE@/api/v1/studies/$STUDY/commit \
  -H 'Content-Type: application/json' -d '{"expected_instances": 1}'
@WHO_ANALYSIS@
ANALYSIS=$(curl -fsS -u "@ANALYSIS_CREDENTIALS@" -d grant_type=client_credentials \
  @BASE@/oauth/token | @PY@ -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -fsS -o job.json -X POST @BASE@/api/v1/jobs/claim -H "Authorization: Bearer $ANALYSIS" \
  -H 'Content-Type: application/json' -d '{"worker": "walkthrough", "wait": 30}'
job() { @PY@ -c "import json; j = json.load(open('job.json')); print($1)"; }
JOB=$(job 'j["id"]'); ORDER=$(job 'j["order_id"]'); JOB_TOKEN=$(job 'j["access_token"]')
CLAIMED=$(job 'j["studies"][0]["study_uid"]')
# The job's token reads the job's study, and nothing else:
curl -fsS -o /dev/null -w "job token, its study: %{http_code}\n" \
  -H "Authorization: Bearer $JOB_TOKEN" @BASE@/dicomweb/studies/$CLAIMED/metadata
curl -fsS -w "\n" -X POST @BASE@/api/v1/jobs/$JOB/complete -H "Authorization: Bearer $ANALYSIS" \
  -F 'pdf=@report.pdf;type=application/pdf' -F 'json=@result.json;type=application/json'
for i in $(seq 100); do @CURL@ -o order.json @BASE@/api/v1/orders/$ORDER
  grep -q '"status":"delivered"' order.json && break; sleep 0.2; done; cat order.json; echo
REPORT=$(@PY@ -c 'import json; print(json.load(open("order.json"))["reports"][0]["id"])')
@CURL@ -o back.pdf -H 'Accept: application/pdf' @BASE@/api/v1/orders/$ORDER/reports/$REPORT
cmp report.pdf back.pdf && echo "the report's PDF came back byte for byte"
@CURL@ -H 'Accept: text/csv' @BASE@/api/v1/orders/$ORDER/reports/$REPORT
@CURL@ "@BASE@/dicomweb/studies/$CLAIMED/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.104.1"
@CURL@ "@BASE@/api/v1/events?types=order.status_changed&limit=5"
"""


def _orders_walkthrough(base: str, dev: admin.DevClient | None, py: str, curl: str, path: str) -> str:
    analysis = dev.analysis if dev else None
    if analysis is not None:
        who = (
            f"# The development analysis client '{analysis.client_id}' (scope analysis); its secret "
            "is in dev-analysis.json in the data folder"
        )
        credentials = f"{analysis.client_id}:{analysis.client_secret}"
    else:
        who = (
            "# An analysis client (`dicomweb-server clients create --analysis`), then\n"
            "# export ANALYSIS_ID=... ANALYSIS_SECRET=... with its id and secret."
        )
        credentials = "$ANALYSIS_ID:$ANALYSIS_SECRET"
    text = _ORDERS
    for name, value in (
        ("@PY@", py),
        ("@FILE@", path),
        ("@CURL@", curl),
        ("@BASE@", base),
        ("@WHO_ANALYSIS@", who),
        ("@ANALYSIS_CREDENTIALS@", credentials),
    ):
        text = text.replace(name, value)
    return text
