//! `lbmesh phone-home`: the drop-in client for the original container.

pub async fn phone_home(args: crate::phone_home::PhoneHomeArgs) -> anyhow::Result<()> {
    let cfg = args.validate()?;
    crate::phone_home::Client::new(cfg)?
        .run(super::termination())
        .await
}
