//! After `PIM_SECRETS_KEY` rotates (the old key in `PIM_SECRETS_KEY_PREVIOUS`), identity seals
//! again under the new key, at start, every TOTP seed an earlier key sealed, so the old key
//! can be dropped at the next restart. (Token signing keys are sealed again as they load:
//! `Keystore`.) Recovery codes and enrolment passes are kept as keyed digests and cannot be
//! digested again: they match under an earlier key for as long as it is given.

use pim_runtime::sealing::Sealer;

use crate::store;

/// How many seeds are read at a time.
const PAGE: u64 = 500;

/// What a pass found: seeds sealed again, and seeds no key given opens.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    pub resealed: usize,
    pub unopened: usize,
}

/// Seals again under the current key every TOTP seed an earlier key sealed.
pub async fn reseal_seeds(db: &pim_runtime::db::Db, sealer: &Sealer) -> anyhow::Result<Resealed> {
    let mut found = Resealed::default();
    let mut after = String::new();
    loop {
        let page = store::totp_seeds_after(db, &after, PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(found);
        };
        after = last.clone();
        for (id, sealed) in page {
            match sealer.open_telling(&sealed, &id) {
                Ok(opened) if opened.stale => {
                    let again = sealer.seal(&opened.plaintext, &id)?;
                    // A method removed or changed meanwhile keeps what it has now.
                    if store::reseal_seed(db, &id, &sealed, &again).await? {
                        found.resealed += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => found.unopened += 1,
            }
        }
    }
}
