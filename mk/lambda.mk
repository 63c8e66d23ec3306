# Mirror-session Lambda and deployment artifacts (see docs/deploy.md).
LAMBDA_ZIP := build/mirror_sessions.zip
RECEIVER_SRC := build/vxmirror-src.tar.gz

.PHONY: lambda-zip receiver-dist deploy-template deploy-lint

# The Lambda's code: the mirror_sessions package alone (the runtime ships boto3).
lambda-zip: $(LAMBDA_ZIP)
$(LAMBDA_ZIP): $(wildcard mirror_sessions/*.py) deploy/build_lambda_zip.py
	$(PYTHON) deploy/build_lambda_zip.py $@

# Source archive the receivers' user data installs (committed HEAD).
receiver-dist:
	mkdir -p build
	git archive --format=tar.gz -o $(RECEIVER_SRC) HEAD

# Re-render deploy/template.yaml after editing template.in.yaml or receiver-userdata.sh.
deploy-template:
	$(PYTHON) deploy/render.py

deploy-lint: setup
	$(VENV)/bin/cfn-lint deploy/template.yaml
