#!/usr/bin/env bash
# Start a local Debian container as the default target, converge
# playbooks/site.yml onto it (with the client CA on this machine), issue one
# device certificate and print how to log in and how to send and read mail.
#   scripts/demo.sh            set up (first run: a few minutes) and converge
#   scripts/demo.sh down       remove the demo container and its files
# Environment: HM_DEMO_PLATFORM (debian12|debian13), ports on 127.0.0.1:
# HM_DEMO_SSH_PORT (2222), HM_DEMO_SMTP_PORT (2525 -> 25),
# HM_DEMO_SMTPS_PORT (4465 -> 465), HM_DEMO_IMAPS_PORT (9993 -> 993).
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
export HM_DEMO_SMTPS_PORT=$smtps_port HM_DEMO_IMAPS_PORT=$imaps_port
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

# A demo container from before the mail ports were published is replaced.
if podman container exists "$name" && ! podman port "$name" 993/tcp >/dev/null 2>&1; then
    podman rm -f "$name" >/dev/null
fi
if ! podman container exists "$name"; then
    podman network exists "$name" || podman network create "$name" >/dev/null
    mkdir -p "$HM_CACHE_DIR/apt/demo/$platform/archives/partial" "$HM_CACHE_DIR/apt/demo/$platform/lists/partial"
    podman run -d --name "$name" --hostname mail.example.test --network "$name" \
        -p "127.0.0.1:$ssh_port:22" -p "127.0.0.1:$smtp_port:25" \
        -p "127.0.0.1:$smtps_port:465" -p "127.0.0.1:$imaps_port:993" \
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

# One device certificate for the demo user, issued by the operator's playbook
# (the bundle stays until `down`; a rerun keeps it).
bundles=$secrets_dir/bundles
bundle=$bundles/demo@example.test_laptop.p12
if [ ! -s "$bundle" ] || [ ! -s "${bundle%.p12}.pass" ]; then
    rm -f "$bundle" "${bundle%.p12}.pass"
    # The playbook writes the password (never printed) to <bundle>.pass, 0600.
    ansible-playbook -i "$demo_dir/inventory.yml" "$HM_ROOT/playbooks/issue_cert.yml" \
        -e cert_email=demo@example.test -e "cert_name='Demo User'" -e cert_device=laptop \
        -e cert_replace=true -e cert_bundle_keep_seconds=0 -e cert_bundle_dir="$bundles"
    [ -s "${bundle%.p12}.pass" ] || { echo "the playbook wrote no bundle password" >&2; exit 1; }
fi
podman cp "$name:/etc/ssl/hardened-mailhost/server.crt" "$demo_dir/server.crt"

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
Revoke the device (then 465 and 993 refuse it):
    . scripts/env.sh && ansible-playbook -i $demo_dir/inventory.yml playbooks/revoke_cert.yml \\
      -e cert_email=demo@example.test -e cert_device=laptop
Remove the demo: scripts/demo.sh down
MSG
