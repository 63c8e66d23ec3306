#!/bin/bash
# vxmirror receiver bootstrap (Amazon Linux 2023). Embedded in template.yaml with Fn::Sub: the
# dollar-brace names below are CloudFormation parameters, filled in at stack creation.
set -euo pipefail
exec > >(tee -a /var/log/vxmirror-bootstrap.log) 2>&1
dnf install -y -q python3.11 python3.11-pip tar gzip gcc
install -d -m 0755 /opt/vxmirror/src /etc/vxmirror /var/lib/vxmirror
aws s3 cp "s3://${ArtifactBucket}/${ReceiverSourceKey}" /opt/vxmirror/vxmirror-src.tar.gz --region "${AWS::Region}"
tar -xzf /opt/vxmirror/vxmirror-src.tar.gz -C /opt/vxmirror/src
python3.11 -m venv /opt/vxmirror/venv
/opt/vxmirror/venv/bin/pip install -q -c /opt/vxmirror/src/constraints.txt /opt/vxmirror/src
ln -sf /opt/vxmirror/venv/bin/vxmirror /usr/local/bin/vxmirror
id vxmirror >/dev/null 2>&1 || useradd --system --home-dir /var/lib/vxmirror --shell /sbin/nologin vxmirror
chown vxmirror: /var/lib/vxmirror
cat > /etc/vxmirror/vxmirror.toml <<'TOML'
data_dir = "/var/lib/vxmirror"

[metrics]
listen = "0.0.0.0:${HealthCheckPort}"

[aws]
enabled = true
region = "${AWS::Region}"
target_ids = ["${TrafficMirrorTarget}"]
refresh_seconds = 60

[forwarders.jsonl]
retain_bytes = 10737418240
TOML
/opt/vxmirror/venv/bin/vxmirror check-config --config /etc/vxmirror/vxmirror.toml
unit=/opt/vxmirror/src/systemd/vxmirror.service
if [ ! -f "$unit" ]; then
  echo "vxmirror: $unit missing from the source archive" >&2
  exit 1
fi
install -m 0644 "$unit" /etc/systemd/system/vxmirror.service
install -d /etc/systemd/system/vxmirror.service.d
cat > /etc/systemd/system/vxmirror.service.d/10-deploy.conf <<'UNIT'
[Service]
ExecStart=
ExecStart=/opt/vxmirror/venv/bin/vxmirror serve --config /etc/vxmirror/vxmirror.toml
UNIT
systemctl daemon-reload
systemctl enable --now vxmirror.service
