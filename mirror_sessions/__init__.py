"""The mirror-session manager: an AWS Lambda that keeps VPC Traffic Mirror sessions in step
with ECS tasks (and opted-in EC2 instances).

Entry point: ``mirror_sessions.handler.handler(event, context)``. Only boto3/botocore at run
time (what the Lambda Python runtime ships). See docs/deploy.md.
"""

MARKER_KEY = "vxmirror:managed-by"
MARKER_VALUE = "vxmirror"
