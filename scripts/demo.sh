#!/usr/bin/env bash
# Start a local Debian container as the default target, converge
# playbooks/site.yml onto it with the self-service certificate portal on (so
# the client CA lives on the host, ca_mode: host), issue one device
# certificate through the portal, and print how to log in, use the portal and
# send and read mail.
#   scripts/demo.sh            set up (first run: a few minutes) and converge
#   scripts/demo.sh down       remove the demo container and its files
# Environment: HM_DEMO_PLATFORM (debian12|debian13), ports on 127.0.0.1:
# HM_DEMO_SSH_PORT (2222), HM_DEMO_SMTP_PORT (2525 -> 25),
# HM_DEMO_SMTPS_PORT (4465 -> 465), HM_DEMO_IMAPS_PORT (9993 -> 993),
# HM_DEMO_HTTPS_PORT (8443 -> 443, the portal).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

name=hm-demo
platform=${HM_DEMO_PLATFORM:-debian12}
ssh_port=${HM_DEMO_SSH_PORT:-2222}
smtp_port=${HM_DEMO_SMTP_PORT:-2525}
smtps_port=${HM_DEMO_SMTPS_PORT:-4465}
imaps_port=${HM_DEMO_IMAPS_PORT:-9993}
https_port=${HM_DEMO_HTTPS_PORT:-8443}
export HM_DEMO_SMTPS_PORT=$smtps_port HM_DEMO_IMAPS_PORT=$imaps_port HM_DEMO_HTTPS_PORT=$https_port
demo_dir="$HM_CACHE_DIR/demo"
secrets_dir="$demo_dir/secrets"

if [ "${1:-up}" = down ]; then
    podman rm -f "$name" >/dev/null 2>&1 || true
    podman network rm "$name" >/dev/null 2>&1 || true
    rm -rf "$demo_dir"
    echo "demo removed"
    exit 0
fi

"$here/setup.sh"
mkdir -p "$demo_dir" "$secrets_dir" && chmod 0700 "$demo_dir" "$secrets_dir"

# A demo container from before the portal (port 443 not published, CA on
# this machine) is replaced, with the bundles of its old CA.
if podman container exists "$name" && ! podman port "$name" 443/tcp >/dev/null 2>&1; then
    podman rm -f "$name" >/dev/null
    rm -rf "$secrets_dir/bundles"
fi
if ! podman container exists "$name"; then
    podman network exists "$name" || podman network create "$name" >/dev/null
    mkdir -p "$HM_CACHE_DIR/apt/demo/$platform/archives/partial" "$HM_CACHE_DIR/apt/demo/$platform/lists/partial"
    podman run -d --name "$name" --hostname mail.example.test --network "$name" \
        -p "127.0.0.1:$ssh_port:22" -p "127.0.0.1:$smtp_port:25" \
        -p "127.0.0.1:$smtps_port:465" -p "127.0.0.1:$imaps_port:993" -p "127.0.0.1:$https_port:443" \
        -v "$HM_CACHE_DIR/apt/demo/$platform/archives:/var/cache/apt/archives:rw" \
        -v "$HM_CACHE_DIR/apt/demo/$platform/lists:/var/lib/apt/lists:rw" \
        "$HM_IMAGE_REPO:$platform" /lib/systemd/systemd >/dev/null
fi

# The demo's CA passphrase: generated once, kept in a 0600 file (a real site
# keeps it in Ansible Vault, see inventory/example/).
if [ ! -s "$demo_dir/ca_passphrase" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$demo_dir/ca_passphrase")
fi

cat >"$demo_dir/inventory.yml" <<INV
all:
  vars:
    hardened_ca_dir: $demo_dir/ca
    hardened_ca_passphrase: "{{ lookup('ansible.builtin.file', '$demo_dir/ca_passphrase') }}"
    ca_organization: hardened.mailhost demo
    hardened_mailhost_mail_domains: [example.test]
    # The portal needs the CA on the host; site.yml copies its certificate
    # and exports to $demo_dir/ca/host/$name/ for the postfix and dovecot roles.
    ca_mode: host
    cert_portal_enabled: true
    cert_portal_server_name: mail.example.test
    cert_portal_url: https://mail.example.test:$https_port/
    cert_portal_users:
      demo: {email: demo@example.test, name: Demo User, notify: demo@outside.example}
    # demo@outside.example is the demo's mail sink in the container.
    postfix_transport_maps:
      - {domain: outside.example, nexthop: "smtp:[127.0.0.1]:2525"}
mailhosts:
  hosts:
    $name:
      ansible_connection: ssh
      ansible_host: 127.0.0.1
      ansible_port: $ssh_port
      ansible_user: root
      ansible_ssh_private_key_file: $demo_dir/admin_key
      ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      sshd_2fa_users: [demo]
      sshd_2fa_enroll_dest: $secrets_dir/totp
      sshd_2fa_enroll_show_qr: true
      sshd_2fa_totp_scratch_codes: 5
      sudo_pin_users: [{name: demo, generate: true}]
      sudo_pin_generated_dest: $secrets_dir/sudo_pin
      postfix_domain: example.test
      dovecot_domain: example.test
INV

# Like a fresh VPS: sshd, the administrator's key for root, one user.
ansible-playbook -i "$demo_dir/inventory.yml" "$HM_ROOT/scripts/demo-bootstrap.yml" \
    -e hm_demo_dir="$demo_dir"
ansible-playbook -i "$demo_dir/inventory.yml" "$HM_ROOT/playbooks/site.yml"

podman cp "$name:/etc/ssl/hardened-mailhost/server.crt" "$demo_dir/server.crt"

# One device certificate for the demo user, issued through the portal as the
# user would (log in, one-time code from the outside mailbox, issue, download
# once); the bundle stays until `down`, a rerun keeps it.
bundles=$secrets_dir/bundles
bundle=$bundles/demo@example.test_laptop.p12
if [ ! -s "$bundle" ] || [ ! -s "${bundle%.p12}.pass" ]; then
    rm -f "$bundle" "${bundle%.p12}.pass"
    # The password goes (never printed) to <bundle>.pass, 0600.
    python3 "$HM_ROOT/scripts/demo-portal.py" issue --device laptop --bundle-dir "$bundles"
fi

cat <<MSG

==> The demo host is up: $name (Debian ${platform#debian}), SSH on 127.0.0.1:$ssh_port

Log in as a person would, with the TOTP code and then the password:
    scan $secrets_dir/totp/demo@$name.png (or the code printed above) with an authenticator app
    ssh -p $ssh_port -o PreferredAuthentications=keyboard-interactive demo@127.0.0.1
    Verification code: <6 digits from the app>
    Password: $(cat "$demo_dir/demo_password")
Recovery codes: $secrets_dir/totp/demo@$name-recovery.txt
A password alone is refused:  ssh -p $ssh_port -o PreferredAuthentications=password demo@127.0.0.1
The administrator logs in with a key: ssh -p $ssh_port -i $demo_dir/admin_key root@127.0.0.1
sudo asks demo for a PIN, not the password: $secrets_dir/sudo_pin/demo@$name.pin

The certificate portal (log in as demo with the password above, then a one-time code):
    https://mail.example.test:$https_port/   (add "127.0.0.1 mail.example.test" to /etc/hosts;
    the browser warns about the demo's self-signed certificate: $demo_dir/server.crt)
    one-time code mailed to demo@outside.example: scripts/demo-portal.py code
    from the command line: scripts/demo-portal.py issue --device phone

Mail for demo@example.test with the device certificate (no password anywhere):
    PKCS#12 bundle (import it in a mail app): $bundle
    its password:                             ${bundle%.p12}.pass
    SMTP 465 (implicit TLS) on 127.0.0.1:$smtps_port, IMAPS on 127.0.0.1:$imaps_port, port 25 on 127.0.0.1:$smtp_port
Send and read with the bundle:
    scripts/demo-mail.py send --to demo@example.test
    scripts/demo-mail.py read
or send with curl:
    printf 'From: demo@example.test\\nSubject: hi\\n\\nhello\\n' | curl -sS --url smtps://mail.example.test:$smtps_port \\
      --resolve mail.example.test:$smtps_port:127.0.0.1 --cacert $demo_dir/server.crt \\
      --cert-type P12 --cert "$bundle:\$(cat ${bundle%.p12}.pass)" \\
      --mail-from demo@example.test --mail-rcpt demo@example.test -T -
Revoke the device on the portal's page (465 and 993 refuse it within seconds).
Remove the demo: scripts/demo.sh down
MSG
