# Sourced before each pip call in the Dockerfile: when the build was given the
# BuildKit secret `pip_ca` (a CA bundle, for TLS-intercepting proxies), pip trusts
# it. The secret is mounted for that RUN only, so it never lands in a layer.
if [ -s /run/secrets/pip_ca ]; then
  export PIP_CERT=/run/secrets/pip_ca
  echo "pip: trusting the CA bundle given as the build secret pip_ca"
fi
