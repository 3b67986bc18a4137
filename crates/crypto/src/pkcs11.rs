//! The `pkcs11` key provider: KEKs are AES-256 secret keys inside an HSM token (non-extractable,
//! sensitive), labelled `carevault-kek-v<N>`. Data keys are wrapped and unwrapped inside the HSM
//! with CKM_AES_GCM (a fresh 96-bit IV per wrap, the caller's associated data bound in): the KEK
//! never leaves the token. Tested against SoftHSM2.
//!
//! A wrapped data key: `0x02 | KEK version (u32, big endian) | IV (12) | ciphertext + tag`; the
//! header is part of the associated data, so a wrapped key cannot be relabelled to another
//! version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use crate::keys::{DataKey, random_bytes};
use crate::{CryptoError, KeyProvider};

const LABEL_PREFIX: &str = "carevault-kek-v";
const FORMAT: u8 = 2;
const IV_LEN: usize = 12;
const HEADER_LEN: usize = 1 + 4 + IV_LEN;

/// Where the HSM is: the PKCS#11 module, the token's label, and its user PIN.
pub struct Pkcs11Settings<'a> {
    pub module: &'a Path,
    pub token_label: &'a str,
    pub pin: zeroize::Zeroizing<String>,
}

pub struct Pkcs11KeyProvider {
    /// The module stays loaded (and initialized) as long as the provider lives.
    context: Pkcs11,
    /// Where the token is, to log in again after the session is lost.
    token_label: String,
    pin: zeroize::Zeroizing<String>,
    /// One logged-in session (PKCS#11 sessions are not to be used from two threads at once),
    /// or none while the HSM is unreachable.
    conn: Mutex<Conn>,
    keks: RwLock<BTreeMap<u32, ObjectHandle>>,
}

struct Conn {
    session: Option<Session>,
    /// When reconnecting last failed: while the HSM is away, requests fail fast instead of each
    /// re-initializing the module.
    failed_at: Option<Instant>,
}

/// How long after a failed reconnect the next one is tried.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

fn hsm(what: &str, e: &P11Error) -> CryptoError {
    // The PKCS#11 return code names the failure; nothing secret is in it.
    let code = match e {
        P11Error::Pkcs11(rv, _) => format!("{rv:?}"),
        other => format!("{other}"),
    };
    CryptoError::KeyStore(format!("HSM: {what} ({code})"))
}

/// Find the token by label, open a read-write session and log in.
fn connect(context: &Pkcs11, token_label: &str, pin: &str) -> Result<Session, CryptoError> {
    let slots = context
        .get_slots_with_token()
        .map_err(|e| hsm("cannot list tokens", &e))?;
    let slot = slots
        .into_iter()
        .find(|s| {
            context
                .get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == token_label)
        })
        .ok_or_else(|| CryptoError::KeyStore("HSM: no token has the configured label".into()))?;
    let session = context
        .open_rw_session(slot)
        .map_err(|e| hsm("cannot open a session", &e))?;
    let pin = AuthPin::from(pin);
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(hsm("login failed", &e)),
    }
    Ok(session)
}

fn initialize(context: &Pkcs11) -> Result<(), CryptoError> {
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(hsm("cannot initialize the PKCS#11 module", &e)),
    }
}

/// The KEK versions a token holds, by their labels.
fn find_keks(session: &Session) -> Result<BTreeMap<u32, ObjectHandle>, CryptoError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ])
        .map_err(|e| hsm("cannot list keys", &e))?;
    let mut found = BTreeMap::new();
    for handle in handles {
        let attrs = session
            .get_attributes(handle, &[AttributeType::Label])
            .map_err(|e| hsm("cannot read a key's label", &e))?;
        for attr in attrs {
            if let Attribute::Label(label) = attr
                && let Some(v) = std::str::from_utf8(&label)
                    .ok()
                    .and_then(|l| l.strip_prefix(LABEL_PREFIX))
                    .and_then(|v| v.parse::<u32>().ok())
            {
                found.insert(v, handle);
            }
        }
    }
    Ok(found)
}

impl Pkcs11KeyProvider {
    /// Load the module, find the token, log in, and read the KEK versions it holds. With
    /// `create_first`, an empty token gets KEK version 1; otherwise an empty token is refused.
    pub fn open(settings: Pkcs11Settings<'_>, create_first: bool) -> Result<Self, CryptoError> {
        let context =
            Pkcs11::new(settings.module).map_err(|e| hsm("cannot load the PKCS#11 module", &e))?;
        initialize(&context)?;
        let session = connect(&context, settings.token_label, &settings.pin)?;
        let keks = find_keks(&session)?;
        let provider = Self {
            context,
            token_label: settings.token_label.to_owned(),
            pin: settings.pin,
            conn: Mutex::new(Conn {
                session: Some(session),
                failed_at: None,
            }),
            keks: RwLock::new(keks),
        };
        if provider.read().is_empty() {
            if !create_first {
                return Err(CryptoError::KeyStore(
                    "HSM: the token holds no CareVault key-encryption key".into(),
                ));
            }
            provider.add_version(1)?;
        }
        Ok(provider)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, ObjectHandle>> {
        self.keks.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `op` on the session. When it fails for any reason but the data (the session or
    /// login was lost, the token went away, the device failed), the module is re-initialized,
    /// the session reopened and logged in again, the KEK handles looked up again, and `op`
    /// tried once more; if the HSM is still unreachable the error is returned (503 upstream)
    /// and the next call tries again.
    fn with_session<T>(
        &self,
        op: impl Fn(&Session, &Self) -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = &conn.session {
            match op(session, self) {
                Err(CryptoError::KeyStore(_)) => {}
                done => return done,
            }
        }
        if conn
            .failed_at
            .is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF)
        {
            return Err(CryptoError::KeyStore("HSM: unreachable".into()));
        }
        match self.reconnect(&mut conn) {
            Ok(()) => conn.failed_at = None,
            Err(e) => {
                conn.failed_at = Some(Instant::now());
                return Err(e);
            }
        }
        let session = conn
            .session
            .as_ref()
            .ok_or_else(|| CryptoError::KeyStore("HSM: unreachable".into()))?;
        op(session, self)
    }

    fn reconnect(&self, conn: &mut Conn) -> Result<(), CryptoError> {
        // Closing the old session may fail too (the token is gone); that is the point.
        conn.session = None;
        // A module may keep a token it lost track of as broken until it is re-initialized
        // (SoftHSM2 does), so start it afresh. Every session of this process is ours.
        let _ = self.context.clone().finalize();
        initialize(&self.context)?;
        let session = connect(&self.context, &self.token_label, &self.pin)?;
        let keks = find_keks(&session)?;
        *self.keks.write().unwrap_or_else(|p| p.into_inner()) = keks;
        conn.session = Some(session);
        Ok(())
    }

    fn handle(&self, version: u32) -> Result<ObjectHandle, CryptoError> {
        self.read()
            .get(&version)
            .copied()
            .ok_or(CryptoError::UnknownKekVersion(version))
    }
}

fn full_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(header.len() + aad.len());
    full.extend_from_slice(header);
    full.extend_from_slice(aad);
    full
}

impl KeyProvider for Pkcs11KeyProvider {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn active_version(&self) -> u32 {
        self.read().keys().next_back().copied().unwrap_or(1)
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<(u32, Vec<u8>), CryptoError> {
        let version = self.active_version();
        self.handle(version)?;
        let iv: [u8; IV_LEN] = random_bytes()?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.push(FORMAT);
        header.extend_from_slice(&version.to_be_bytes());
        header.extend_from_slice(&iv);
        let full = full_aad(&header, aad);
        let sealed = self.with_session(|session, me| {
            let handle = me.handle(version)?;
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, &full, 128.into())
                .map_err(|e| hsm("bad GCM parameters", &e))?;
            session
                .encrypt(&Mechanism::AesGcm(params), handle, dek.expose())
                .map_err(|e| hsm("wrap failed", &e))
        })?;
        let mut out = header;
        out.extend_from_slice(&sealed);
        Ok((version, out))
    }

    fn unwrap(&self, kek_version: u32, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, CryptoError> {
        if wrapped.len() < HEADER_LEN + 16 || wrapped.first() != Some(&FORMAT) {
            return Err(CryptoError::MalformedHeader);
        }
        let (header, sealed) = wrapped.split_at(HEADER_LEN);
        let version = header
            .get(1..5)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(CryptoError::MalformedHeader)?;
        if version != kek_version {
            return Err(CryptoError::Unauthentic);
        }
        self.handle(kek_version)?;
        let iv: [u8; IV_LEN] = header
            .get(5..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::MalformedHeader)?;
        let full = full_aad(header, aad);
        let plain = self.with_session(|session, me| {
            let handle = me.handle(kek_version)?;
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, &full, 128.into())
                .map_err(|e| hsm("bad GCM parameters", &e))?;
            session
                .decrypt(&Mechanism::AesGcm(params), handle, sealed)
                .map_err(|e| match e {
                    P11Error::Pkcs11(
                        RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                        _,
                    ) => CryptoError::Unauthentic,
                    other => hsm("unwrap failed", &other),
                })
        })?;
        let plain = zeroize::Zeroizing::new(plain);
        DataKey::from_bytes(&plain)
    }

    fn versions(&self) -> Vec<u32> {
        self.read().keys().copied().collect()
    }

    fn add_version(&self, version: u32) -> Result<(), CryptoError> {
        if self
            .read()
            .keys()
            .next_back()
            .is_some_and(|last| *last >= version)
        {
            return Err(CryptoError::KeyStore(format!(
                "key-encryption key version v{version} is not newer than the active one"
            )));
        }
        let label = format!("{LABEL_PREFIX}{version}").into_bytes();
        // Not retried after a reconnect: a key generated just before the session was lost
        // may exist already (the reconnect finds it by its label).
        let handle = {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let session = conn
                .session
                .as_ref()
                .ok_or_else(|| CryptoError::KeyStore("HSM: unreachable".into()))?;
            session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Label(label),
                    ],
                )
                .map_err(|e| hsm("cannot generate a key-encryption key", &e))?
        };
        self.keks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version, handle);
        Ok(())
    }

    fn destroy_version(&self, version: u32) -> Result<(), CryptoError> {
        if self.active_version() == version {
            return Err(CryptoError::KeyStore(
                "the active key-encryption key cannot be destroyed".into(),
            ));
        }
        self.with_session(|session, me| {
            let handle = me.handle(version)?;
            session
                .destroy_object(handle)
                .map_err(|e| hsm("cannot destroy the key-encryption key", &e))
        })?;
        self.keks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&version);
        Ok(())
    }
}
